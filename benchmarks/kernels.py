"""What the CPU gives and where onnxruntime loses it, on the models' shapes, same threads:
- int8: one matrix product (128 tokens x MiniLM's and XLM-R large's layers), fp32 MatMul against the integer
  product alone (MatMulInteger on uint8 x int8, the arithmetic bound of any int8 model) and against dynamic
  quantisation as our int8 graphs run it (DynamicQuantizeLinear + MatMulInteger + rescale); PyTorch alongside;
- layer norm: the fused SkipLayerNormalization kernel against Add + LayerNormalization (why exports leave it unfused);
- threads: the default bundle's graph on real texts one at a time, one session with all threads against one
  single-threaded run per thread side by side (what the runtime does on CPU).

    python -m benchmarks.kernels [--quick] [--work DIR]
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from car_onnx.runtime.session import machine_threads

from .common import one_text_feeds, real_records, section_main

SHAPES = {
    "MiniLM attention projection": (128, 384, 384),
    "MiniLM FFN in": (128, 384, 1536),
    "MiniLM FFN out": (128, 1536, 384),
    "XLM-R large FFN in": (128, 1024, 4096),
}


def graph(kind: str, k: int, n: int) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).integers(-127, 128, size=(k, n))
    if kind == "fp32":
        nodes = [helper.make_node("MatMul", ["x", "W"], ["y"])]
        inits, x_type, y_type = (
            [numpy_helper.from_array(w.astype(np.float32), "W")],
            TensorProto.FLOAT,
            TensorProto.FLOAT,
        )
    elif kind == "dynamic":
        nodes = [
            helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
            helper.make_node("MatMulInteger", ["xq", "W", "xz", "wz"], ["y32"]),
            helper.make_node("Cast", ["y32"], ["yf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["yf", "xs"], ["y"]),
        ]
        inits = [numpy_helper.from_array(w.astype(np.int8), "W"), numpy_helper.from_array(np.array(0, np.int8), "wz")]
        x_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
    else:  # "integer": activations already uint8, int32 out
        nodes = [helper.make_node("MatMulInteger", ["x", "W"], ["y"])]
        inits, x_type, y_type = [numpy_helper.from_array(w.astype(np.int8), "W")], TensorProto.UINT8, TensorProto.INT32
    return serialized(
        helper.make_graph(
            nodes,
            kind,
            [helper.make_tensor_value_info("x", x_type, ["M", k])],
            [helper.make_tensor_value_info("y", y_type, ["M", n])],
            inits,
        )
    )


def serialized(graph) -> bytes:
    """A model of `graph` with the standard and Microsoft operator sets, for an InferenceSession."""
    from onnx import helper

    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model.SerializeToString()


def rate(fn, seconds: float) -> float:
    """Calls per second, after a warm-up."""
    for _ in range(5):
        fn()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        reps += 1
    return reps / (time.perf_counter() - start)


def layer_norm_graph(fused: bool, hidden: int) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    inits = [
        numpy_helper.from_array(np.full(hidden, v, np.float32), name)
        for name, v in (("gamma", 1.0), ("beta", 0.0), ("bias", 0.1))
    ]
    if fused:
        nodes = [
            helper.make_node(
                "SkipLayerNormalization",
                ["x", "skip", "gamma", "beta", "bias"],
                ["y"],
                domain="com.microsoft",
                epsilon=1e-12,
            )
        ]
    else:
        nodes = [
            helper.make_node("Add", ["x", "bias"], ["a"]),
            helper.make_node("Add", ["a", "skip"], ["s"]),
            helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12),
        ]
    value = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "S", hidden]) for n in ("x", "skip", "y")]
    return serialized(helper.make_graph(nodes, "ln", value[:2], value[2:], inits))


def side_by_side(threads: int, n: int) -> dict:
    """The default bundle's graphs on n real texts, one text per run: one session using all threads against
    `threads` single-threaded runs side by side (seconds, best of 2)."""
    from concurrent.futures import ThreadPoolExecutor

    import onnxruntime as ort

    from car_onnx.runtime.bundle import find_bundle
    from car_onnx.runtime.manifest import read_manifest

    root = find_bundle(None)
    spec = read_manifest(root).model_for("embed")
    texts = [spec.template.render(r["instruction"], r["input"], r["output"]) for r in real_records(n, seed=4)]
    feeds = one_text_feeds(root, spec, texts)
    out = {}
    for precision, variant in spec.variants.items():
        if precision == "fp16":
            continue
        row = {}
        for label, intra, workers in (
            ("one session, all threads", threads, 1),
            ("single-threaded runs side by side", 1, threads),
        ):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = intra, 1
            session = ort.InferenceSession(
                str(root / variant.graph),
                opts,
                providers=["CPUExecutionProvider"],
                disabled_optimizers=["SkipLayerNormFusion"],
            )
            best = float("inf")
            for _ in range(2):
                start = time.perf_counter()
                with ThreadPoolExecutor(workers) as pool:
                    list(pool.map(lambda f: session.run(None, f), feeds))
                best = min(best, time.perf_counter() - start)
            row[label] = round(best, 2)
        row["speed-up"] = round(row["one session, all threads"] / row["single-threaded runs side by side"], 2)
        out[precision] = row
    return {"bundle": str(root), "texts": n, "seconds": out}


def run(work: Path, quick: bool) -> dict:
    import onnxruntime as ort
    import torch

    threads, seconds = machine_threads(), (0.5 if quick else 3.0)
    torch.set_num_threads(threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    rng = np.random.default_rng(1)
    products = {}
    for name, (m, k, n) in SHAPES.items():
        x = rng.normal(size=(m, k)).astype(np.float32)
        feeds = {"fp32": x, "dynamic": x, "integer": (x * 30 + 128).clip(0, 255).astype(np.uint8)}
        flop, row = 2 * m * k * n / 1e9, {}
        for kind, feed in feeds.items():
            session = ort.InferenceSession(graph(kind, k, n), opts, providers=["CPUExecutionProvider"])
            row[f"onnxruntime {kind}"] = round(flop * rate(lambda: session.run(None, {"x": feed}), seconds), 1)
        a, b = torch.from_numpy(x), torch.randn(k, n)
        row["torch fp32"] = round(flop * rate(lambda: a @ b, seconds), 1)
        row["integer / fp32"] = round(row["onnxruntime integer"] / row["onnxruntime fp32"], 2)
        row["dynamic / fp32"] = round(row["onnxruntime dynamic"] / row["onnxruntime fp32"], 2)
        products[name] = {"shape_mkn": [m, k, n], "gflops": row}
    layer_norm = {}
    for hidden in (384, 1024):
        x = rng.normal(size=(1, 128, hidden)).astype(np.float32)
        row = {}
        for label, fused in (("SkipLayerNormalization", True), ("Add + LayerNormalization", False)):
            session = ort.InferenceSession(
                layer_norm_graph(fused, hidden),
                opts,
                providers=["CPUExecutionProvider"],
                disabled_optimizers=["SkipLayerNormFusion"],
            )
            row[label] = round(1e3 / rate(lambda: session.run(None, {"x": x, "skip": x}), seconds), 4)
        row["fused / unfused"] = round(row["SkipLayerNormalization"] / row["Add + LayerNormalization"], 2)
        layer_norm[f"128 x {hidden}"] = row
    return {
        "threads": threads,
        "products": products,
        "layer_norm_ms_per_call": layer_norm,
        "threads_side_by_side": side_by_side(threads, 60 if quick else 400),
        "note": "integer / fp32 bounds what int8 can gain over fp32 in the matrix products; the rest of a "
        "transformer (attention, layer norms, GELU, quantising activations) gains nothing",
    }


if __name__ == "__main__":
    section_main("kernels", run, __doc__)
