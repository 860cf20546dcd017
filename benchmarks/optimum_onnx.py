"""optimum-onnx (no longer a dependency: `pip install optimum-onnx` to run this) against car-onnx's own export of
all-MiniLM-L6-v2: optimum's sentence-transformers export (graph outputs, fusions, fidelity to sentence-transformers
on the export's check texts) and its AVX-512 VNNI dynamic int8 config, beside `export embedder` (fp32 + int8).

    python -m benchmarks.optimum_onnx [--work DIR]
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .common import section_main

FUSED = (
    "Attention",
    "MultiHeadAttention",
    "BiasGelu",
    "SkipLayerNormalization",
    "EmbedLayerNormalization",
    "LayerNormalization",
)


def mean_min_cosine(a: np.ndarray, b: np.ndarray) -> dict:
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return {"mean_cosine": round(float(cos.mean()), 6), "min_cosine": round(float(cos.min()), 6)}


def sentence_embeddings(graph: Path, tokenizer: Path, texts: list[str]) -> np.ndarray:
    """optimum's graph on one text at a time (no padding), truncated at 256 tokens as sentence-transformers does."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer))
    tok.no_padding()
    tok.enable_truncation(256)
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    out = []
    for text in texts:
        ids = np.array([tok.encode(text).ids], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        out.append(session.run(["sentence_embedding"], {n: feed[n] for n in names})[0][0])
    return np.array(out)


def run(work: Path, quick: bool) -> dict:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import onnx
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig
    from sentence_transformers import SentenceTransformer

    from car_onnx_export.default import minilm_dir
    from car_onnx_export.embedder import export_embedder, verification_texts

    out = Path(work) / "optimum-onnx"
    folder, texts = minilm_dir(), verification_texts()
    st = SentenceTransformer(str(folder), device="cpu").encode(texts, batch_size=16, convert_to_numpy=True)

    start = time.perf_counter()
    main_export(
        str(folder),
        output=str(out / "optimum"),
        task="feature-extraction",
        library_name="sentence_transformers",
        local_files_only=True,
        device="cpu",
    )
    export_s = time.perf_counter() - start
    graph = onnx.load(str(out / "optimum" / "model.onnx"))
    ops = [n.op_type for n in graph.graph.node]
    start = time.perf_counter()
    quantizer = ORTQuantizer.from_pretrained(str(out / "optimum"), file_name="model.onnx")
    quantizer.quantize(
        save_dir=str(out / "optimum-int8"),
        quantization_config=AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=True),
    )
    quantize_s = time.perf_counter() - start
    optimum = {
        "export_s (with its own validation)": round(export_s, 1),
        "int8_quantize_s": round(quantize_s, 1),
        "inputs": [i.name for i in graph.graph.input],
        "outputs": [o.name for o in graph.graph.output],
        "fused_ops": {k: ops.count(k) for k in FUSED if k in ops},
        "fp32_vs_sentence_transformers": mean_min_cosine(
            sentence_embeddings(out / "optimum" / "model.onnx", folder / "tokenizer.json", texts), st
        ),
        "int8_avx512_vnni_dynamic_vs_sentence_transformers": mean_min_cosine(
            sentence_embeddings(next((out / "optimum-int8").glob("*.onnx")), folder / "tokenizer.json", texts), st
        ),
    }
    start = time.perf_counter()
    spec = export_embedder(folder, out / "ours", precisions=("fp32", "int8"), log=lambda m: None)
    ours = {
        "export_s (fp32 + int8, both checked on the texts)": round(time.perf_counter() - start, 1),
        "fp32": spec.variants["fp32"].fidelity,
        "int8": {k: v for k, v in spec.variants["int8"].fidelity.items() if k != "gate"},
    }
    return {"texts": len(texts), "optimum_onnx": optimum, "car_onnx_export_embedder": ours}


if __name__ == "__main__":
    section_main("optimum_onnx", run, __doc__)
