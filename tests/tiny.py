"""Tiny bundles for runtime tests, built with onnx's helper API and `tokenizers` (no torch), plus a numpy
reference of the same graph so tests can check the runtime's numbers independently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from car_onnx.manifest import ModelSpec, Template, Variant, write_manifest

WORDS = ("the a an of to and is in it you that was for on are with as be at this have from or one had by "
         "word but not what all were we when your can said there use each which she do how their if will up "
         "other about out many then them these so some her would make like him into time has look two more "
         "write go see number no way could people my than first water been call who oil its now find long down "
         "day did get come made may part instruction input response answer explain list give").split()
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
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    # Settings of its own that the runtime must override (as all-MiniLM-L6-v2's file pads to 128).
    tok.enable_padding(pad_id=0, pad_token="[PAD]", length=20)
    tok.enable_truncation(max_length=30)
    tok.save(str(path))


def weights(seed: int = 0):
    rng = np.random.default_rng(seed)
    vocab_size = 4 + len(WORDS) + 3
    return rng.normal(size=(vocab_size, DIM)).astype(np.float32), rng.normal(size=(DIM, 1)).astype(np.float32)


def make_graph(path: Path, roles: tuple[str, ...], seed: int = 0, tables=None) -> None:
    """embedding = masked mean of a token lookup; score = tanh(embedding) @ w. `tables`: other (E, w)."""
    emb, w = weights(seed) if tables is None else tables
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["tok"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["tok", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "axis1"], ["count"], keepdims=0),
        helper.make_node("Div", ["summed", "count"], ["embedding"]),
        helper.make_node("Tanh", ["embedding"], ["t"]),
        helper.make_node("MatMul", ["t", "W"], ["s2"]),
        helper.make_node("Squeeze", ["s2", "axis1"], ["score"]),
    ]
    inits = [numpy_helper.from_array(emb, "E"), numpy_helper.from_array(w, "W"),
             numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
              for n in ("input_ids", "attention_mask")]
    outs = {"score": helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
            "embed": helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", emb.shape[1]])}
    graph = helper.make_graph(nodes, "tiny", inputs, [outs[r] for r in roles], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def make_bundle(root: Path, *, split: bool = False, precisions=("fp32",), seed: int = 0) -> Path:
    """A bundle with one graph serving both roles, or (split) a scorer and an embedder with different weights;
    another `seed` gives other weights. `precisions`: fp32, int8 (dynamic quantisation, like the export's) and/or
    fp16 (weights and compute in fp16, fp32 inputs and outputs, like the export's)."""
    assert set(precisions) <= {"fp32", "int8", "fp16"}, precisions
    root = Path(root)
    groups = [("scorer", ("score",), 1), ("embedder", ("embed",), 2)] if split else [("joint", ("score", "embed"), 0)]
    specs = []
    for name, roles, offset in groups:
        (root / name).mkdir(parents=True, exist_ok=True)
        make_tokenizer(root / name / "tokenizer.json")
        make_graph(root / name / "model.fp32.onnx", roles, seed + offset)
        if "int8" in precisions:  # quantised as the export does it: dynamic, activation scales per batch
            quantize_dynamic(root / name / "model.fp32.onnx", root / name / "model.int8.onnx",
                             weight_type=QuantType.QInt8)
        if "fp16" in precisions:
            from onnxruntime.transformers.float16 import convert_float_to_float16

            onnx.save(convert_float_to_float16(onnx.load(str(root / name / "model.fp32.onnx")), keep_io_types=True),
                      str(root / name / "model.fp16.onnx"))
        if "fp32" not in precisions:
            (root / name / "model.fp32.onnx").unlink()
        variants = {p: Variant(f"{name}/model.{p}.onnx") for p in precisions}
        specs.append(ModelSpec(
            name=name, roles=roles, tokenizer=f"{name}/tokenizer.json", template=TEMPLATE, max_length=MAX_LENGTH,
            pad_id=0, inputs=("input_ids", "attention_mask"),
            outputs={r: {"score": "score", "embed": "embedding"}[r] for r in roles}, variants=variants,
            embedding_dim=DIM if "embed" in roles else None))
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

