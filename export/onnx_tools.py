"""From a PyTorch module to checked bundle variants: export, fuse, quantise, reload, compare, gate, record.

Every variant is reloaded through the runtime's own code path (tokenizer, batching, padding, session) and
compared with the PyTorch model on real texts; fp32 must match, reduced precisions must pass a fidelity gate.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import shutil
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import external_data_helper

from car_onnx.runtime.graph import OnnxModel
from car_onnx.runtime.manifest import ModelSpec, Variant, read_manifest, write_manifest

from .errors import ExportError, Refusal, VariantsRefused  # noqa: F401 (VariantsRefused: raised here)
from .ort_internals import dynamic_quantizer, shapes_without_weights, tensors_in_save_order, working_directory

# onnx protobufs cannot exceed 2 GB; above this size the tensors go to one external `<graph>.data` file, and each
# ONNX step (fusion, quantisation, conversion, check) runs in its own process, so that its memory is returned.
EXTERNAL_DATA_BYTES = 1_500_000_000
# Embedding tables are quantised too when the largest is above this size (int8 tries it first, then keeps them fp32
# if the gate refuses): XLM-R large's 250k x 1024 table is 1 GB of the 1.5 GB int8 graph; MiniLM's 47 MB stays fp32.
EMBEDDING_INT8_BYTES = 100_000_000
FP32_MAX_SCORE_ERROR = 1e-4
FP32_MIN_COSINE = 0.99999
DEFAULT_GATES = {"spearman": 0.99, "mean_cosine": 0.995}


def data_bytes(tensor: onnx.TensorProto) -> int:
    """Size of a tensor, also when its data is still in an external file (loaded with load_external_data=False)."""
    if not external_data_helper.uses_external_data(tensor):
        return tensor.ByteSize()
    length = next((e.value for e in tensor.external_data if e.key == "length"), None)
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return int(length) if length is not None else int(np.prod(tensor.dims)) * itemsize


def save_onnx(
    model: onnx.ModelProto,
    path: Path,
    source: Path | None = None,
    *,
    external: bool | None = None,
    attributes: bool = False,
) -> None:
    """Save, with external data beside the graph when the model is too large for one protobuf (`external`: decided
    by the caller), in the files onnx.save_model writes, byte for byte (`attributes`: its convert_attribute). Tensors
    left in external files (onnx.load(..., load_external_data=False)) are read from the folder `source` one at a
    time as they are written, so that the weights are never all in memory."""
    path = Path(path)
    for old in (path, path.with_name(path.name + ".data")):
        old.unlink(missing_ok=True)
    # onnx's own order when it saves
    tensors = list(tensors_in_save_order(model, attributes))
    if external is None:
        external = sum(data_bytes(t) for t in tensors) > EXTERNAL_DATA_BYTES
    if not external:
        if source is not None:
            external_data_helper.load_external_data_for_model(model, str(source))
        onnx.save_model(model, str(path))
        return
    for tensor in tensors:
        if external_data_helper.uses_external_data(tensor):
            external_data_helper.load_external_data_for_tensor(tensor, str(source))
        if tensor.HasField("raw_data") and sys.getsizeof(tensor.raw_data) >= 1024:  # onnx's size_threshold test
            external_data_helper.set_external_data(tensor, path.name + ".data")
            external_data_helper.save_external_data(tensor, str(path.parent))
            tensor.ClearField("raw_data")
    onnx.save_model(model, str(path))


def export_module(module, path: Path, example: dict, outputs: list[str]) -> None:
    """TorchScript-based export (the graph shape onnxruntime's transformer fusions recognise), dynamic batch
    and sequence axes; above 2 GB torch writes the tensors as files beside `path`."""
    import torch

    names = list(example)
    axes = {n: {0: "batch", 1: "sequence"} if example[n].dim() > 1 else {0: "batch"} for n in names}
    axes |= {o: {0: "batch"} for o in outputs}
    with torch.no_grad():
        torch.onnx.export(
            module.eval(),
            tuple(example[n] for n in names),
            str(path),
            input_names=names,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=17,
            do_constant_folding=True,
            dynamo=False,
        )


def return_freed_memory() -> None:
    """Collect, then hand the free heap back to the system (glibc's malloc_trim): what PyTorch's export and the
    reference run leave free would otherwise stay in this process while the ONNX steps run beside it."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def in_process(big: bool, fn, *args):
    """`fn(*args)`; for a large model in a fresh process, so that the memory of each step is returned when it
    ends and the export's peak is that of its largest step, not their sum."""
    if not big:
        return fn(*args)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def optimize(src: Path, dst: Path, num_heads: int, hidden_size: int) -> dict:
    """onnxruntime's transformer fusions (attention, gelu, embedding layer norm, ...); returns the fused-op counts.
    Skip-layer-norm fusion is left out: its CPU kernel is 2.6-4.8x slower than Add + LayerNormalization (measured in
    benchmarks/kernels.py); a CUDA session still fuses them at load time. The weights stay in their external files
    (if any): the fusions read the few they merge, the symbolic shape inference copies only the graph, and the
    result is written tensor by tensor (the same bytes as with all weights loaded, at a fraction of the memory)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    src, dst = Path(src).resolve(), Path(dst).resolve()
    model = onnx.load(str(src), load_external_data=False)
    external = any(external_data_helper.uses_external_data(t) for t in model.graph.initializer)
    options = FusionOptions("bert")
    options.enable_skip_layer_norm = False
    with working_directory(src.parent if external else None):
        opt = optimize_model(
            model,
            model_type="bert",
            num_heads=num_heads,
            hidden_size=hidden_size,
            opt_level=0,
            optimization_options=options,
        )
        del model
        stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
        opt.topological_sort()  # what opt.save_model_to_file does before saving, with the opset it adds
        if any(n.domain == "com.microsoft" for n in opt.model.graph.node) and not any(
            o.domain == "com.microsoft" for o in opt.model.opset_import
        ):
            opt.model.opset_import.add(domain="com.microsoft", version=1)
        save_onnx(opt.model, dst, source=src.parent if external else None)
    return stats


def ffn_output_matmuls(path: Path) -> list[str]:
    """The MatMuls int8 keeps in fp32: each layer's FFN output projection (`.../output/dense/MatMul`, not the
    attention output), in layer order. Their inputs (after GELU) have outlier channels, and in the first layers a
    first token far above all others, which one 8-bit scale per tensor loses. On the default bundle, quantising
    them too is 1.2-1.3x faster but misses the fidelity targets or the export gate, plainly, with the first token's
    row kept fp32, or after SmoothQuant (measured in benchmarks/int8_recipes.py)."""
    names = [n.name for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type == "MatMul"]
    return [n for n in names if "/output/dense/" in n and "/attention/" not in n]


def word_embedding_bytes(path: Path) -> int:
    """Size in fp32 of the largest embedding table the graph looks up (a Gather's initializer, or the word table
    of a fused EmbedLayerNormalization); 0 without one."""
    model = onnx.load(str(path), load_external_data=False)
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    tables = [dims.get(n.input[0]) for n in model.graph.node if n.op_type == "Gather"]
    tables += [dims.get(n.input[2]) for n in model.graph.node if n.op_type == "EmbedLayerNormalization"]
    return max((4 * int(np.prod(d)) for d in tables if d), default=0)


def quantize_int8(
    src: Path, dst: Path, exclude: list[str] | Callable[[Path], list[str]] | None = None, embeddings: bool = False
) -> None:
    """Dynamic int8 of the MatMuls and the fused attention (QAttention), `exclude` kept fp32 (names, or a function
    of the fp32 graph's path that names them; by default the FFN output projections: ffn_output_matmuls): uint8
    activations, per-channel signed weights in 7 bits (reduce_range), so that AVX2's 16-bit pair sums never
    saturate and a CPU with VNNI and one without compute the same integers (on an AVX2-only CPU, quantising
    attention with full-range weights fell to Spearman 0.988 on the export's check texts). `embeddings`: the
    embedding tables too, one uint8 scale per table (Gather from a uint8 table then DequantizeLinear, or
    QEmbedLayerNormalization where the embedding layer was fused).
    quantize_dynamic's steps, with the weights left in their external files (if any), as in `optimize`: each is
    read when it is quantised, the rest copied when written (the same bytes as quantize_dynamic writes)."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    exclude = ffn_output_matmuls(src) if exclude is None else exclude(src) if callable(exclude) else exclude
    ops = ["MatMul", "Attention"] + (["Gather", "EmbedLayerNormalization"] if embeddings else [])
    model = onnx.shape_inference.infer_shapes(onnx.load(str(src), load_external_data=False))
    external = any(external_data_helper.uses_external_data(t) for t in model.graph.initializer)
    with working_directory(src.parent if external else None), shapes_without_weights():
        quantizer = dynamic_quantizer(model, exclude, ops)
        del model
        quantizer.quantize_model()
        quantizer.model.topological_sort()  # what its save_model_to_file does first
        save_onnx(
            quantizer.model.model,
            dst,
            source=src.parent if external else None,
            external=Path(str(src) + ".data").exists(),
            attributes=True,
        )


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
    if texts and isinstance(texts[0], tuple):  # (text, where its response starts), for a graph that reads it
        return model.run([t for t, _ in texts], tuple(spec.roles), max_tokens=4096, starts=[s for _, s in texts])
    return model.run(texts, tuple(spec.roles), max_tokens=4096)


def check_fp32(metrics: dict) -> None:
    if metrics.get("max_abs_score_error", 0.0) > FP32_MAX_SCORE_ERROR:
        raise ExportError(
            f"fp32 export check failed: score error {metrics['max_abs_score_error']} > "
            f"{FP32_MAX_SCORE_ERROR} against PyTorch"
        )
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
    module,
    spec: ModelSpec,
    root: Path,
    example: dict,
    texts: list[str],
    reference: Callable[[list[str]], dict[str, np.ndarray]],
    *,
    precisions=("fp32", "int8"),
    num_heads: int,
    hidden_size: int,
    gates: dict | None = None,
    force: bool = False,
    int8_exclude: list[str] | Callable[[Path], list[str]] | None = None,
    release: Callable[[], None] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[ModelSpec, list[Refusal]]:
    """Export `module` (returning one tensor per role, in `spec.roles` order) into `root/<spec.name>/` in the
    asked precisions, check each, and return the spec with the variants that passed (with their measured
    fidelity) and the refused ones. A refused variant's files are deleted; the others are kept, so that the caller
    writes a valid bundle before reporting it. fp32 is always built and checked first; when not asked for it is
    dropped, unless no asked variant passed. `spec.variants` is replaced; `spec.tokenizer` must already exist.
    `release` is called once the PyTorch side is done (export and reference outputs): the caller drops its
    references to the module there, so that a large model's memory is free for the ONNX steps."""
    gates = {**DEFAULT_GATES, **(gates or {})}
    outputs = [spec.outputs[r] for r in spec.roles]
    root = Path(root)
    raw = root / spec.name / ".raw"
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    try:
        export_module(module, raw / "model.onnx", example, outputs)
        ref = reference(texts)
        del module
        if release is not None:
            release()
        return_freed_memory()
        big = sum(f.stat().st_size for f in raw.iterdir()) > EXTERNAL_DATA_BYTES
        fp32 = f"{spec.name}/model.fp32.onnx"
        fusions = in_process(big, optimize, raw / "model.onnx", root / fp32, num_heads, hidden_size)
    finally:
        shutil.rmtree(raw, ignore_errors=True)
    log(f"{spec.name}: fused operators {fusions}")
    variants = {"fp32": Variant(fp32)}
    spec = dataclasses.replace(spec, variants=variants)
    fp32_metrics = compare(ref, in_process(big, run_variant, spec, root, "fp32", texts))
    check_fp32(fp32_metrics)
    variants["fp32"] = Variant(fp32, {**fp32_metrics, "fusions": fusions})
    log(f"{spec.name}: fp32 matches PyTorch: {fp32_metrics}")
    refused: list[Refusal] = []
    for precision in precisions:
        if precision == "fp32":
            continue
        if precision not in ("int8", "fp16"):
            raise ExportError(f"unknown precision {precision!r}")
        rel = f"{spec.name}/model.{precision}.onnx"
        recipes = [{}]  # int8 of a large word-embedding table: tried first, then kept fp32 if the gate refuses
        if precision == "int8" and word_embedding_bytes(root / fp32) > EMBEDDING_INT8_BYTES:
            recipes = [{"embeddings": "int8"}, {"embeddings": "fp32"}]
        for recipe in recipes:
            if precision == "int8":
                in_process(
                    big, quantize_int8, root / fp32, root / rel, int8_exclude, recipe.get("embeddings") == "int8"
                )
            else:
                in_process(big, convert_fp16, root / fp32, root / rel)
            spec = dataclasses.replace(spec, variants={**variants, precision: Variant(rel)})
            metrics = compare(ref, in_process(big, run_variant, spec, root, precision, texts))
            failed = check_gate(precision, metrics, gates)
            label = precision + (f" (embeddings {recipe['embeddings']})" if recipe else "")
            log(f"{spec.name}: {label} against PyTorch fp32: {metrics}")
            if not failed or force or recipe is recipes[-1]:
                break
            log(f"{spec.name}: {'; '.join(failed)} with embeddings int8: trying them fp32")
        if failed and not force:
            for f in (root / rel, root / (rel + ".data")):
                f.unlink(missing_ok=True)
            refused.append(Refusal(precision, failed, metrics))
            log(f"{spec.name}: {'; '.join(failed)}: refused")
            continue
        variants[precision] = Variant(rel, {**metrics, **recipe, "gate": gates, "forced": bool(failed)})
    if "fp32" not in precisions and len(variants) > 1:
        variants.pop("fp32")
        for f in (root / fp32, root / (fp32 + ".data")):
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
        models = [m for m in read_manifest(root).models if m.name != spec.name and not set(m.roles) & set(spec.roles)]
    write_manifest(root, models + [spec], created_by)


def copy_tokenizer(src: Path, root: Path, name: str) -> str:
    """Copy tokenizer.json into the model's folder; returns its bundle-relative path."""
    rel = f"{name}/tokenizer.json"
    (Path(root) / name).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, Path(root) / rel)
    return rel
