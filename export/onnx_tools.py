"""From a PyTorch module to checked bundle variants: export, fuse, quantise, reload, compare, gate, record.

Every variant is reloaded through the runtime's own code path (tokenizer, batching, padding, session) and
compared with the PyTorch model on real texts; fp32 must match, reduced precisions must pass a fidelity gate.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch

from car_onnx import CarError
from car_onnx.manifest import ModelSpec, Variant, read_manifest, write_manifest
from car_onnx.models import OnnxModel

from .errors import ExportError, Refusal, VariantsRefused  # noqa: F401 (VariantsRefused: raised here)

# onnx protobufs cannot exceed 2 GB; above this size the tensors go to one external `<graph>.data` file.
EXTERNAL_DATA_BYTES = 1_500_000_000
FP32_MAX_SCORE_ERROR = 1e-4
FP32_MIN_COSINE = 0.99999
DEFAULT_GATES = {"spearman": 0.99, "mean_cosine": 0.995}


def save_onnx(model: onnx.ModelProto, path: Path) -> None:
    """Save, with external data beside the graph when the model is too large for one protobuf."""
    path = Path(path)
    for old in (path, path.with_name(path.name + ".data")):
        old.unlink(missing_ok=True)
    size = sum(t.ByteSize() for t in model.graph.initializer)
    if size > EXTERNAL_DATA_BYTES:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


def export_module(module: torch.nn.Module, path: Path, example: dict[str, torch.Tensor], outputs: list[str]) -> None:
    """TorchScript-based export (the graph shape onnxruntime's transformer fusions recognise), dynamic batch
    and sequence axes, then re-saved whole or with external data."""
    path = Path(path)
    names = list(example)
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {o: {0: "batch"} for o in outputs}
    tmp_dir = path.parent / f".{path.name}.tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad():
            torch.onnx.export(module.eval(), tuple(example[n] for n in names), str(tmp_dir / "model.onnx"),
                              input_names=names, output_names=outputs, dynamic_axes=axes, opset_version=17,
                              do_constant_folding=True, dynamo=False)
        save_onnx(onnx.load(str(tmp_dir / "model.onnx")), path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def optimize(src: Path, dst: Path, *, num_heads: int, hidden_size: int) -> dict:
    """onnxruntime's transformer fusions (attention, gelu, embedding layer norm, ...); returns the fused-op counts.
    Skip-layer-norm fusion is left out: its CPU kernel is 2.6-4.8x slower than Add + LayerNormalization (measured in
    benchmarks/kernels.py); a CUDA session still fuses them at load time."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_skip_layer_norm = False
    opt = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size, opt_level=0,
                         optimization_options=options)
    stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    Path(dst).unlink(missing_ok=True)
    Path(str(dst) + ".data").unlink(missing_ok=True)
    big = sum(t.ByteSize() for t in opt.model.graph.initializer) > EXTERNAL_DATA_BYTES
    opt.save_model_to_file(str(dst), use_external_data_format=big, all_tensors_to_one_file=True)  # adds opsets
    return stats


def ffn_output_matmuls(path: Path) -> list[str]:
    """The MatMuls int8 keeps in fp32: each layer's FFN output projection (`.../output/dense/MatMul`, not the
    attention output), in layer order. Their inputs (after GELU) have outlier channels, and in the first layers a
    first token far above all others, which one 8-bit scale per tensor loses. On the default bundle, quantising
    them too is 1.2-1.3x faster but misses the fidelity targets or the export gate, plainly, with the first token's
    row kept fp32, or after SmoothQuant (measured in benchmarks/int8_recipes.py)."""
    names = [n.name for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type == "MatMul"]
    return [n for n in names if "/output/dense/" in n and "/attention/" not in n]


def quantize_int8(src: Path, dst: Path, exclude: list[str] | None = None) -> None:
    """Dynamic int8 of the MatMuls and the fused attention (QAttention), `exclude` kept fp32 (by default the FFN
    output projections: ffn_output_matmuls): uint8 activations, per-channel signed weights in 7 bits
    (reduce_range), so that AVX2's 16-bit pair sums never saturate and a CPU with VNNI and one without compute the
    same integers (on an AVX2-only CPU, quantising attention with full-range weights fell to Spearman 0.988 on the
    export's check texts)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    exclude = ffn_output_matmuls(src) if exclude is None else exclude
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                     op_types_to_quantize=["MatMul", "Attention"], nodes_to_exclude=list(exclude),
                     use_external_data_format=Path(str(src) + ".data").exists(),
                     extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})


def convert_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and compute for GPUs, with fp32 inputs and outputs."""
    from onnxruntime.transformers.onnx_model import OnnxModel as OrtOnnxModel

    model = OrtOnnxModel(onnx.load(str(src)))
    model.convert_float_to_float16(keep_io_types=True)
    save_onnx(model.model, dst)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) > 1 else 1.0


def compare(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> dict:
    """Fidelity of `got` against `ref`: score error, rank agreement and top-5% overlap; embedding cosines."""
    metrics: dict[str, float] = {}
    if "score" in ref:
        a, b = ref["score"].astype(np.float64), got["score"].astype(np.float64)
        top = max(1, len(a) // 20)
        metrics["max_abs_score_error"] = float(np.abs(a - b).max())
        metrics["spearman"] = spearman(a, b)
        metrics["top5pct_overlap"] = len(set(np.argsort(-a)[:top]) & set(np.argsort(-b)[:top])) / top
    if "embed" in ref:
        a, b = ref["embed"].astype(np.float64), got["embed"].astype(np.float64)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        metrics["mean_cosine"] = float(cos.mean())
        metrics["min_cosine"] = float(cos.min())
    metrics["texts"] = len(next(iter(ref.values())))
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}


def run_variant(spec: ModelSpec, root: Path, precision: str, texts: list[str]) -> dict[str, np.ndarray]:
    """Outputs of one variant through the runtime's own path, padded batches of mixed lengths."""
    model = OnnxModel(spec, root, precision)  # on CPU, one batch per core
    return model.run(texts, tuple(spec.roles), max_tokens=4096)


def check_fp32(metrics: dict) -> None:
    if metrics.get("max_abs_score_error", 0.0) > FP32_MAX_SCORE_ERROR:
        raise ExportError(f"fp32 export check failed: score error {metrics['max_abs_score_error']} > "
                          f"{FP32_MAX_SCORE_ERROR} against PyTorch")
    if metrics.get("min_cosine", 1.0) < FP32_MIN_COSINE:
        raise ExportError(f"fp32 export check failed: embedding cosine {metrics['min_cosine']} < {FP32_MIN_COSINE}")


def check_gate(precision: str, metrics: dict, gates: dict) -> list[str]:
    """The gate failures of a reduced-precision variant (empty when it passes)."""
    failed = []
    if "spearman" in metrics and metrics["spearman"] < gates["spearman"]:
        failed.append(f"Spearman {metrics['spearman']} < {gates['spearman']}")
    if "mean_cosine" in metrics and metrics["mean_cosine"] < gates["mean_cosine"]:
        failed.append(f"mean cosine {metrics['mean_cosine']} < {gates['mean_cosine']}")
    return [f"{precision}: {f}" for f in failed]


def build_variants(
    module: torch.nn.Module,
    spec: ModelSpec,
    root: Path,
    example: dict[str, torch.Tensor],
    texts: list[str],
    reference: Callable[[list[str]], dict[str, np.ndarray]],
    *,
    precisions=("fp32", "int8"),
    num_heads: int,
    hidden_size: int,
    gates: dict | None = None,
    force: bool = False,
    int8_exclude: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[ModelSpec, list[Refusal]]:
    """Export `module` (returning one tensor per role, in `spec.roles` order) into `root/<spec.name>/` in the
    asked precisions, check each, and return the spec with the variants that passed (with their measured
    fidelity) and the refused ones. A refused variant's files are deleted; the others are kept, so that the caller
    writes a valid bundle before reporting it. fp32 is always built and checked first; when not asked for it is
    dropped, unless no asked variant passed. `spec.variants` is replaced; `spec.tokenizer` must already exist."""
    gates = {**DEFAULT_GATES, **(gates or {})}
    outputs = [spec.outputs[r] for r in spec.roles]
    folder = Path(root) / spec.name
    raw = folder / "raw.onnx"
    export_module(module, raw, example, outputs)
    fp32 = f"{spec.name}/model.fp32.onnx"
    fusions = optimize(raw, Path(root) / fp32, num_heads=num_heads, hidden_size=hidden_size)
    for f in (raw, raw.with_name(raw.name + ".data")):
        f.unlink(missing_ok=True)
    log(f"{spec.name}: fused operators {fusions}")
    ref = reference(texts)
    variants = {"fp32": Variant(fp32)}
    spec = dataclasses.replace(spec, variants=variants)
    fp32_metrics = compare(ref, run_variant(spec, root, "fp32", texts))
    check_fp32(fp32_metrics)
    variants["fp32"] = Variant(fp32, {**fp32_metrics, "fusions": fusions})
    log(f"{spec.name}: fp32 matches PyTorch: {fp32_metrics}")
    refused: list[Refusal] = []
    for precision in precisions:
        if precision == "fp32":
            continue
        rel = f"{spec.name}/model.{precision}.onnx"
        if precision == "int8":
            quantize_int8(Path(root) / fp32, Path(root) / rel, int8_exclude)
        elif precision == "fp16":
            convert_fp16(Path(root) / fp32, Path(root) / rel)
        else:
            raise ExportError(f"unknown precision {precision!r}")
        spec = dataclasses.replace(spec, variants={**variants, precision: Variant(rel)})
        metrics = compare(ref, run_variant(spec, root, precision, texts))
        failed = check_gate(precision, metrics, gates)
        log(f"{spec.name}: {precision} against PyTorch fp32: {metrics}")
        if failed and not force:
            for f in (Path(root) / rel, Path(root) / (rel + ".data")):
                f.unlink(missing_ok=True)
            refused.append(Refusal(precision, failed, metrics))
            log(f"{spec.name}: {'; '.join(failed)}: refused")
            continue
        variants[precision] = Variant(rel, {**metrics, "gate": gates, "forced": bool(failed)})
    if "fp32" not in precisions and len(variants) > 1:
        variants.pop("fp32")
        for f in (Path(root) / fp32, Path(root) / (fp32 + ".data")):
            f.unlink(missing_ok=True)
    return dataclasses.replace(spec, variants=variants), refused


def raise_refused(root: Path, spec: ModelSpec, refused: list[Refusal]) -> None:
    """After the bundle is written with the variants that passed: VariantsRefused if any asked one was not."""
    if refused:
        raise VariantsRefused(root, spec.name, list(spec.variants), refused)


def add_to_bundle(root: Path, spec: ModelSpec, created_by: str) -> None:
    """Write the manifest with `spec` added: a model of the same name, or serving one of its roles, is replaced."""
    root = Path(root)
    models = []
    if (root / "manifest.json").is_file():
        models = [m for m in read_manifest(root).models
                  if m.name != spec.name and not set(m.roles) & set(spec.roles)]
    write_manifest(root, models + [spec], created_by)


def copy_tokenizer(src: Path, root: Path, name: str) -> str:
    """Copy tokenizer.json into the model's folder; returns its bundle-relative path."""
    rel = f"{name}/tokenizer.json"
    (Path(root) / name).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, Path(root) / rel)
    return rel
