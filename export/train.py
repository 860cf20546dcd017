"""`car-onnx train-scorer`: train the COMET-style head on a frozen encoder (all-MiniLM-L6-v2, or the multilingual
USE of export/multilingual.py), on expert-revised pairs.

The encoder is frozen and the head mixes layers linearly before average pooling, so pooling commutes with the
mix: each text is encoded once into per-layer pooled vectors and the head trains on those in seconds.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch

from car_onnx import InputError

from .heads import HeadConfig, PooledHead, ScoringHead

TEMPLATE = {"with_input": "Instruction: {instruction} Input: {input} Response: {output}",
            "without_input": "Instruction: {instruction} Response: {output}"}  # as the expert-revised data is written
MAX_LENGTH = 256
# Chosen on score_valid.csv (5 seeds: 0.957-0.961 at the last epoch, 0.965-0.972 at the best one).
RECIPE = dict(hidden_sizes=(256,), mix="sparsemax", epochs=40, lr=1e-3, weight_decay=1e-4, batch=64, dropout=0.1,
              pair_weight=1.0)


@dataclasses.dataclass
class PairData:
    texts: list[str]
    better: np.ndarray  # index of the revised text of each pair
    worse: np.ndarray  # index of the original text of each pair


def read_pairs(path: Path, limit: int | None = None) -> PairData:
    """`src,score` rows in consecutive pairs (the paper's format) or `src,pos,neg` triplets."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = reader.fieldnames or []
    texts, better, worse = [], [], []
    if {"src", "pos", "neg"} <= set(header):
        for n, row in enumerate(rows[:limit], 2):
            texts += [row["src"] + row["pos"], row["src"] + row["neg"]]
            better.append(len(texts) - 2)
            worse.append(len(texts) - 1)
    elif {"src", "score"} <= set(header):
        if len(rows) % 2:
            raise InputError(path, None, f"{len(rows)} rows: src,score data must come in consecutive pairs")
        for i in range(0, len(rows) if limit is None else min(len(rows), 2 * limit), 2):
            a, b = rows[i], rows[i + 1]
            try:
                sa, sb = float(a["score"]), float(b["score"])
            except ValueError:
                raise InputError(path, f"line {i + 2}", "score must be a number", "score") from None
            if sa == sb:
                raise InputError(path, f"line {i + 2}", "the two rows of a pair have the same score", "score")
            texts += [a["src"], b["src"]]
            better.append(len(texts) - (2 if sa > sb else 1))
            worse.append(len(texts) - (1 if sa > sb else 2))
    else:
        raise InputError(path, "line 1", f"expected columns src,score or src,pos,neg, got {','.join(header)}")
    if not texts:
        raise InputError(path, None, "no pairs")
    return PairData(texts, np.array(better), np.array(worse))


def pooled_layers(texts: list[str], encoder, tokenizer, batch: int = 32) -> np.ndarray:
    """[n, layers + 1, hidden]: every hidden state averaged over the non-pad positions of each text."""
    out = []
    order = np.argsort([len(t) for t in texts], kind="stable")
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            idx = order[start:start + batch]
            enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=MAX_LENGTH,
                            return_tensors="pt")
            hidden = encoder(**enc, output_hidden_states=True).hidden_states
            m = enc["attention_mask"].unsqueeze(-1).float()
            out.append(torch.stack([(h * m).sum(1) / m.sum(1) for h in hidden], 1).numpy())
    pooled = np.concatenate(out)
    result = np.empty_like(pooled)
    result[order] = pooled
    return result


def agreement(scores: np.ndarray, data: PairData) -> float:
    return float((scores[data.better] > scores[data.worse]).mean())


def fit(train_x: np.ndarray, train: PairData, valid_x: np.ndarray, valid: PairData, *, seed: int, epochs: int,
        log=print) -> tuple[ScoringHead, dict]:
    """Seeded, deterministic training; keeps the epoch with the best validation agreement."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    r = RECIPE
    cfg = HeadConfig(hidden=train_x.shape[2], num_layers=train_x.shape[1], mix=r["mix"], pool="avg",
                     hidden_sizes=tuple(r["hidden_sizes"]), dropout=r["dropout"])
    head = ScoringHead(cfg, pad_id=0)
    model = PooledHead(head)
    opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
    x, vx = torch.from_numpy(train_x), torch.from_numpy(valid_x)
    better, worse = torch.from_numpy(train.better), torch.from_numpy(train.worse)
    gen = torch.Generator().manual_seed(seed)
    best, best_state, history = -1.0, None, []
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(better), generator=gen).split(r["batch"]):
            sb, sw = model(x[better[idx]]), model(x[worse[idx]])
            mse = ((sb - 1) ** 2 + sw**2).mean() / 2  # the paper's objective: 1 for revisions, 0 for originals
            pair = torch.nn.functional.softplus(sw - sb).mean()  # and a ranking term on the same pairs
            loss = mse + r["pair_weight"] * pair
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = agreement(model(vx).numpy(), valid)
        history.append(acc)
        if acc > best:
            best, best_epoch = acc, epoch + 1
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    head.eval()
    with torch.no_grad():
        train_acc = agreement(model(x).numpy(), train)
    log(f"best epoch {best_epoch}: valid agreement {best:.4f}, train {train_acc:.4f}")
    return head, {"valid_agreement": round(best, 4), "train_agreement": round(train_acc, 4), "epoch": best_epoch,
                  "seed": seed, "history": [round(h, 4) for h in history]}


ENCODERS = ("minilm", "multilingual")


def encoder_features(name: str):
    """(texts -> [n, layers, hidden] pooled features, token limit) of the frozen encoder `name`."""
    if name == "multilingual":
        from . import multilingual as ml

        sp_model, weights = ml.package_resources()
        encoder, tokenizer = ml.USEEncoder(weights).eval(), ml.build_tokenizer(sp_model)
        return (lambda texts: ml.encode_layers(texts, encoder, tokenizer)), ml.MAX_LENGTH
    if name != "minilm":
        raise ValueError(f"encoder must be one of {ENCODERS}, got {name!r}")
    from transformers import AutoTokenizer

    from .default import load_encoder, minilm_dir

    encoder = load_encoder()
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)
    return (lambda texts: pooled_layers(texts, encoder, tokenizer)), MAX_LENGTH


def train_head(train: Path, valid: Path, output: Path, *, seed: int = 0, epochs: int | None = None,
               limit: int | None = None, encoder: str = "minilm", log=print) -> dict:
    """Train on `train`, select on `valid`, write `output` (.safetensors) and its metadata (.json) beside it."""
    from safetensors.torch import save_file

    torch.set_num_threads(max(1, torch.get_num_threads()))
    start = time.perf_counter()
    train_data, valid_data = read_pairs(train, limit), read_pairs(valid)
    encode, max_length = encoder_features(encoder)
    train_x = encode(train_data.texts)
    valid_x = encode(valid_data.texts)
    encoded = time.perf_counter()
    log(f"encoded {len(train_data.texts) + len(valid_data.texts)} texts in {encoded - start:.0f}s")
    head, metrics = fit(train_x, train_data, valid_x, valid_data, seed=seed, epochs=epochs or RECIPE["epochs"], log=log)
    metrics |= {"encode_seconds": round(encoded - start, 1), "train_seconds": round(time.perf_counter() - encoded, 1),
                "train_file": Path(train).name, "train_sha256": _sha256(train), "valid_file": Path(valid).name,
                "valid_sha256": _sha256(valid), "train_pairs": len(train_data.better),
                "valid_pairs": len(valid_data.better), "recipe": RECIPE}
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(output))
    meta = {"head": dataclasses.asdict(head.cfg), "pad_id": 0, "max_length": max_length, "template": TEMPLATE,
            "encoder": encoder, "training": metrics}
    output.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return metrics


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
