"""What int8 can gain on this CPU: one matrix product at the models' shapes (128 tokens x MiniLM's and XLM-R
large's layers), onnxruntime fp32 MatMul against the integer product alone (MatMulInteger on uint8 x int8, the
arithmetic bound of any int8 model) and against dynamic quantisation as our int8 graphs run it
(DynamicQuantizeLinear + MatMulInteger + rescale); PyTorch fp32 alongside. GFLOP/s, same threads.

    python -m benchmarks.int8_gemm [--quick] [--work DIR]
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from car_onnx.session import machine_threads

from .common import section_main

SHAPES = {"MiniLM attention projection": (128, 384, 384), "MiniLM FFN in": (128, 384, 1536),
          "MiniLM FFN out": (128, 1536, 384), "XLM-R large FFN in": (128, 1024, 4096)}


def graph(kind: str, k: int, n: int) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).integers(-127, 128, size=(k, n))
    if kind == "fp32":
        nodes = [helper.make_node("MatMul", ["x", "W"], ["y"])]
        inits, x_type, y_type = [numpy_helper.from_array(w.astype(np.float32), "W")], TensorProto.FLOAT, TensorProto.FLOAT
    elif kind == "dynamic":
        nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
                 helper.make_node("MatMulInteger", ["xq", "W", "xz", "wz"], ["y32"]),
                 helper.make_node("Cast", ["y32"], ["yf"], to=TensorProto.FLOAT),
                 helper.make_node("Mul", ["yf", "xs"], ["y"])]
        inits = [numpy_helper.from_array(w.astype(np.int8), "W"), numpy_helper.from_array(np.array(0, np.int8), "wz")]
        x_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
    else:  # "integer": activations already uint8, int32 out
        nodes = [helper.make_node("MatMulInteger", ["x", "W"], ["y"])]
        inits, x_type, y_type = [numpy_helper.from_array(w.astype(np.int8), "W")], TensorProto.UINT8, TensorProto.INT32
    g = helper.make_graph(nodes, kind, [helper.make_tensor_value_info("x", x_type, ["M", k])],
                          [helper.make_tensor_value_info("y", y_type, ["M", n])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def gflops(fn, flop: float, seconds: float) -> float:
    for _ in range(5):
        fn()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        reps += 1
    return round(flop * reps / (time.perf_counter() - start) / 1e9, 1)


def run(work: Path, quick: bool) -> dict:
    import onnxruntime as ort
    import torch

    threads, seconds = machine_threads(), (0.5 if quick else 3.0)
    torch.set_num_threads(threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    rng = np.random.default_rng(1)
    out = {}
    for name, (m, k, n) in SHAPES.items():
        x = rng.normal(size=(m, k)).astype(np.float32)
        feeds = {"fp32": x, "dynamic": x, "integer": (x * 30 + 128).clip(0, 255).astype(np.uint8)}
        row = {}
        for kind, feed in feeds.items():
            session = ort.InferenceSession(graph(kind, k, n), opts, providers=["CPUExecutionProvider"])
            row[f"onnxruntime {kind}"] = gflops(lambda: session.run(None, {"x": feed}), 2 * m * k * n, seconds)
        a, b = torch.from_numpy(x), torch.randn(k, n)
        row["torch fp32"] = gflops(lambda: a @ b, 2 * m * k * n, seconds)
        row["integer / fp32"] = round(row["onnxruntime integer"] / row["onnxruntime fp32"], 2)
        row["dynamic / fp32"] = round(row["onnxruntime dynamic"] / row["onnxruntime fp32"], 2)
        out[name] = {"shape_mkn": [m, k, n], "gflops": row}
    return {"threads": threads, "products": out,
            "note": "integer / fp32 bounds what int8 can gain over fp32 in the matrix products; the rest of a "
                    "transformer (attention, layer norms, GELU, quantising activations) gains nothing"}


if __name__ == "__main__":
    section_main("int8_gemm", run, __doc__)
