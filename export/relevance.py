"""The relevance branch (`car-onnx train-scorer --base HEAD --relevance-layers N`, `car-onnx export default
--relevance`): copies of all-MiniLM's last N layers, on the states below them in the shared pass, and a small
network (a TunedBranch, export/tuned.py) trained alone to tell whether the response answers the prompt: the real
answers of the fitting pairs (revised and original) against, for each of their records, the answer of the record
whose instruction is most alike and the answer of a random other record. Its output is a log-odds; the score loses
`points` x max(0, below - p) / below, p its probability: nothing while p >= `below` (most real answers), up to
`points` for an answer it is sure belongs to another question.

An answer to a near question is a real, fluent answer: a pointwise quality score ranks it by its quality, and the
frozen heads' terms can only see it as far as that costs real answers nothing (0.78-0.80 held apart). A branch that
reads the prompt and the response together and is trained for that question alone sees it (measured in
docs/scorers.md), at the cost of N layers more per text in the same pass (the embedding is untouched).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from .tuned import TunedBranch, _batch

RECIPE = dict(
    steps=500,
    warmup=30,
    lr=3e-5,
    net_lr=1e-3,
    weight_decay=0.01,
    batch=16,
    neighbours=8,
    hidden=128,
    points=1.0,
    below=0.2,
)
LAYERS = (1, 2, 3, 4, 5, 6)


def relevance_penalty(logit: torch.Tensor, points: float, below: float) -> torch.Tensor:
    """`points` x max(0, below - sigmoid(logit)) / below."""
    return points * torch.relu(below - torch.sigmoid(logit)) / below


def fit_relevance(
    layers: list[nn.Module],
    states: list[np.ndarray],
    response: list[np.ndarray],
    rows: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int,
    steps: int = RECIPE["steps"],
    log=print,
) -> tuple[TunedBranch, dict]:
    """Train a TunedBranch on copies of `layers` to tell the texts `rows` whose `labels` are 1 (the response answers
    the prompt) from those whose labels are 0 (binary cross-entropy on its output; `states`/`response` as
    tuned.fit_tuned's), in batches of neighbours in length, the learning rate rising over `warmup` steps and falling
    linearly to 0 at `steps`. Returns the branch with its weights rounded to fp16 (as stored) and the loss by
    every 50 steps."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    branch = TunedBranch(layers, RECIPE["hidden"])
    optimiser = torch.optim.AdamW(
        [
            {"params": branch.layers.parameters(), "lr": RECIPE["lr"]},
            {"params": branch.net.parameters(), "lr": RECIPE["net_lr"]},
        ],
        weight_decay=RECIPE["weight_decay"],
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min(1.0, (s + 1) / RECIPE["warmup"]) * max(0.0, 1.0 - s / steps)
    )
    order = rows[np.argsort([len(states[i]) for i in rows], kind="stable")]
    target = dict(zip(rows.tolist(), labels.astype(np.float32).tolist()))
    size = min(RECIPE["batch"], len(order))
    width = min(len(order), size * RECIPE["neighbours"])
    losses, history, start = [], [], time.perf_counter()
    branch.train()
    for step in range(1, steps + 1):
        batch = order[rng.integers(len(order) - width + 1) + rng.choice(width, size=size, replace=False)]
        logit = branch(*_batch(states, response, batch))
        y = torch.tensor([target[i] for i in batch.tolist()])
        loss = nn.functional.binary_cross_entropy_with_logits(logit, y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps:
            history.append(
                {
                    "step": step,
                    "loss": round(float(np.mean(losses[-50:])), 4),
                    "seconds": round(time.perf_counter() - start),
                }
            )
            log(f"relevance branch: {history[-1]}")
    branch.load_state_dict({k: v.half().float() for k, v in branch.state_dict().items()})  # as stored: fp16
    return branch.eval(), {"recipe": RECIPE, "steps": steps, "history": history}


def negatives(records: list, rows: np.ndarray, *, seed: int) -> list[tuple[int, str]]:
    """For each record of `rows` (objects with instruction, input, output), (the record, an answer that is not its
    own): the answer of the record among `rows` whose instruction is most alike (car_onnx.core.defects.nearest_other),
    and that of a random other record among `rows`, where it differs from the record's."""
    from car_onnx.core.defects import nearest_other

    chosen = [records[i] for i in rows]
    near = nearest_other([f"{r.instruction} {r.input}" for r in chosen], [r.output for r in chosen])
    rng = np.random.default_rng(seed)
    out = []
    for j, r in enumerate(chosen):
        if near[j] >= 0:
            out.append((int(rows[j]), chosen[near[j]].output))
        other = chosen[rng.integers(len(chosen))].output
        if other != r.output:
            out.append((int(rows[j]), other))
    return out
