"""Which matrix products of the default bundle int8 can take within its fidelity targets. The shipped recipe keeps
every FFN output projection in fp32; the others quantise them too: plainly, with the first token's row kept fp32
(its activations are tens of times larger than any other token's in the first layers), or after SmoothQuant
(Xiao et al., 2023; per-channel scales from 300 calibration records that are not among the evaluated ones).
Each int8 graph against the fp32 graph, through the runtime (one text per batch, all cores): on real records (the
issue's targets: Spearman >= 0.99, top-5% overlap >= 0.9, mean embedding cosine >= 0.995), on the export's check
texts (its gate: Spearman >= 0.99, mean cosine >= 0.995), and seconds for the same records.

    python -m benchmarks.int8_recipes [--quick] [--work DIR]
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from car_onnx.runtime.bundle import find_bundle
from car_onnx.runtime.graph import OnnxModel
from car_onnx.runtime.manifest import Variant, read_manifest
from car_onnx.runtime.session import SessionConfig, machine_threads

from .common import one_text_feeds, real_records, section_main

ALPHA = 0.85


def ffn_input_amax(graph: Path, feeds: list[dict]) -> np.ndarray:
    """[layers, channels]: the largest |input| of each FFN output projection's channels over `feeds`."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    from car_onnx_export.onnx_tools import ffn_output_matmuls

    model = onnx.load(str(graph))
    nodes = {n.name: n for n in model.graph.node}
    inputs = [nodes[name].input[0] for name in ffn_output_matmuls(graph)]
    model.graph.output.extend(helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None) for x in inputs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    amax = 0
    for feed in feeds:
        amax = np.maximum(
            amax, np.stack([np.abs(v).reshape(-1, v.shape[-1]).max(0) for v in session.run(inputs, feed)])
        )
    return amax


def rewrite_ffn_outputs(src: Path, dst: Path, how: str, amax: np.ndarray | None = None) -> list[str]:
    """The fp32 graph with each FFN output projection x W rewritten as the same function; returns the new
    MatMuls to keep in fp32. "first-token": the first row of x times W apart, concatenated with the rest.
    "smooth": (x / s) (s W), s_j = amax_j^ALPHA / max_k |W_jk|^(1 - ALPHA)."""
    import onnx
    from onnx import helper, numpy_helper

    from car_onnx_export.onnx_tools import ffn_output_matmuls, save_onnx

    model = onnx.load(str(src))
    weights = {t.name: t for t in model.graph.initializer}
    keep = []
    if how == "first-token":
        for name, value in (("zero", 0), ("one", 1), ("end", np.iinfo(np.int64).max)):
            model.graph.initializer.append(numpy_helper.from_array(np.array([value], np.int64), f"split/{name}"))
    for layer, name in enumerate(ffn_output_matmuls(src)):
        node = next(n for n in model.graph.node if n.name == name)
        at = list(model.graph.node).index(node)
        (x, w), (y,) = node.input, node.output
        if how == "first-token":
            model.graph.node.remove(node)
            new = [
                helper.make_node("Slice", [x, "split/zero", "split/one", "split/one"], [f"{name}/x0"]),
                helper.make_node("Slice", [x, "split/one", "split/end", "split/one"], [f"{name}/x1"]),
                helper.make_node("MatMul", [f"{name}/x0", w], [f"{name}/y0"], name=f"{name}/first"),
                helper.make_node("MatMul", [f"{name}/x1", w], [f"{name}/y1"], name=f"{name}/rest"),
                helper.make_node("Concat", [f"{name}/y0", f"{name}/y1"], [y], axis=1),
            ]
            for k, n in enumerate(new):
                model.graph.node.insert(at + k, n)
            keep.append(f"{name}/first")
        elif how == "smooth":
            weight = numpy_helper.to_array(weights[w])
            s = (amax[layer] ** ALPHA / np.maximum(np.abs(weight).max(1), 1e-5) ** (1 - ALPHA)).clip(1e-5)
            weights[w].CopyFrom(numpy_helper.from_array((weight * s[:, None]).astype(np.float32), w))
            model.graph.initializer.append(numpy_helper.from_array((1 / s).astype(np.float32), f"{name}/inv_s"))
            model.graph.node.insert(at, helper.make_node("Mul", [x, f"{name}/inv_s"], [f"{name}/xs"]))
            node.input[0] = f"{name}/xs"
        else:
            raise ValueError(how)
    save_onnx(model, dst)
    return keep


def run(work: Path, quick: bool) -> dict:
    from car_onnx_export.default import check_texts
    from car_onnx_export.onnx_tools import DEFAULT_GATES, check_gate, compare, ffn_output_matmuls, quantize_int8

    root = find_bundle(None)
    spec = read_manifest(root).model_for("embed")
    fp32 = root / spec.variants["fp32"].graph
    n = 200 if quick else 1000
    pool = real_records(n + 300, seed=1)  # the first n are default_bundle.py's int8-vs-fp32 records
    texts = [spec.template.render(r["instruction"], r["input"], r["output"]) for r in pool]
    records, calibration, gate_texts = texts[:n], texts[n:], check_texts(spec.template)
    folder = work / "int8-recipes"
    folder.mkdir(parents=True, exist_ok=True)
    ffn = ffn_output_matmuls(fp32)
    amax = ffn_input_amax(fp32, one_text_feeds(root, spec, calibration))
    config = SessionConfig(device="cpu", threads=machine_threads())

    def outputs(graph: Path) -> tuple[dict, dict, float]:
        precision = "fp32" if graph == fp32 else "int8"  # an absolute graph path replaces the bundle's
        model = OnnxModel(dataclasses.replace(spec, variants={precision: Variant(str(graph))}), root, precision, config)
        model.run(records[:20], spec.roles)
        start = time.perf_counter()
        out = model.run(records, spec.roles)
        seconds = time.perf_counter() - start
        return out, model.run(gate_texts, spec.roles), seconds

    ref, ref_gate, fp32_s = outputs(fp32)
    rewritten = {"first-token": folder / "first-token.fp32.onnx", "smooth": folder / "smooth.fp32.onnx"}
    keep = {how: rewrite_ffn_outputs(fp32, path, how, amax) for how, path in rewritten.items()}
    recipes = {  # name: (source graph, MatMuls kept in fp32)
        "FFN outputs fp32 (shipped)": (fp32, ffn),
        "FFN outputs int8": (fp32, []),
        "FFN outputs int8, first token's row fp32": (rewritten["first-token"], keep["first-token"]),
        f"FFN outputs smoothed (alpha {ALPHA}) and int8": (rewritten["smooth"], []),
        f"FFN outputs smoothed (alpha {ALPHA}) and int8, layer 0's fp32": (rewritten["smooth"], ffn[:1]),
    }
    results, shipped_s = {}, None
    for k, (name, (source, kept)) in enumerate(recipes.items()):
        graph = folder / f"recipe{k}.int8.onnx"
        quantize_int8(source, graph, kept)
        out, gate, seconds = outputs(graph)
        shipped_s = shipped_s or seconds
        on_gate = compare(ref_gate, gate)
        results[name] = {
            "records": compare(ref, out),
            "check_texts": on_gate,
            "export_gate": "passed" if not check_gate("int8", on_gate, DEFAULT_GATES) else "refused",
            "seconds": round(seconds, 2),
            "speed_vs_shipped": round(shipped_s / seconds, 3),
        }
    return {
        "records": n,
        "calibration_records": len(calibration),
        "check_texts": len(gate_texts),
        "threads": config.workers(),
        "fp32_seconds": round(fp32_s, 2),
        "recipes": results,
    }


if __name__ == "__main__":
    section_main("int8_recipes", run, __doc__)
