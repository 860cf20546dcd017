"""The tuned branch (`car-onnx train-scorer --base HEAD --tuned-layers N`, `car-onnx export default --tuned`): copies
of all-MiniLM's last N layers that read the states below them as the shared pass does (the prompt and the response
attend to each other), and a small network on the response's and the prompt's means after them, trained with the
score: its output d is added to the base head's score (quality head and defect terms kept as they are).

The frozen heads read the encoder's states as sentence-transformers trained them; tuning the top layers lets the
score read what those states do not hold (where an answer stops short, a refusal inside it), at the cost of N layers
more per text in the same pass (the embedding is untouched). Measured in docs/scorers.md.

Training: each step puts 16 real answers above their corrupted copies by a margin, 8 expert revisions above their
originals (a softened hinge), and holds d near zero on the real texts (its square), pairs drawn among neighbours in
length; every `every` steps the choose split (train-scorer's 15% held apart) is measured and the step kept is the
one with the best mean over kinds of real answers preferred there, among those whose expert agreement there is no
lower than the base head's.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import nn

from .heads import span_mean

RECIPE = dict(
    steps=600,
    every=100,
    lr=3e-5,
    net_lr=1e-3,
    weight_decay=0.01,
    defect_batch=16,
    expert_batch=8,
    margin=0.5,
    sharpness=4.0,
    real_weight=1.0,
    hidden=128,
    neighbours=8,
)
LAYERS = (1, 2)


class TunedBranch(nn.Module):
    """Copies of `layers` (BertLayers, trained) on the states below them and a network on [response mean, prompt
    mean, their product, their distance, their cosine] -> `hidden` -> 1: the term d of each text."""

    def __init__(self, layers: list[nn.Module], hidden: int = RECIPE["hidden"]):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for layer in layers)
        width = self.layers[0].output.dense.out_features
        self.net = nn.Sequential(nn.Linear(4 * width + 1, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, states, attention_mask, response_mask) -> torch.Tensor:
        mask = attention_mask.to(states.dtype)
        blocked = (1.0 - mask)[:, None, None, :] * -10000.0  # pads not read, as the encoder's own mask
        # entered through a mask product (zero at pads): as the defect branch (default.JointModel.branch_states)
        h = states * mask.unsqueeze(-1)
        for layer in self.layers:
            h = layer(h, attention_mask=blocked)[0]
        response = response_mask.to(h.dtype) * mask
        r, p = span_mean(h, response), span_mean(h, mask - response)
        cosine = nn.functional.cosine_similarity(r, p, dim=1).unsqueeze(1)
        return self.net(torch.cat([r, p, r * p, (r - p).abs(), cosine], 1)).squeeze(1)


def _batch(states: list[np.ndarray], response: list[np.ndarray], rows) -> tuple[torch.Tensor, ...]:
    """Zero-padded [B, T, H] states, [B, T] attention and response masks of the texts `rows`."""
    from car_onnx.runtime.tokenization import pad_batch

    resp, mask = (torch.from_numpy(a).float() for a in pad_batch([response[i] for i in rows], 0))
    h = torch.zeros(*mask.shape, states[rows[0]].shape[1])
    for j, i in enumerate(rows):
        h[j, : len(states[i])] = torch.from_numpy(states[i].astype(np.float32))
    return h, mask, resp


def terms_of(branch: TunedBranch, states, response, rows: np.ndarray, batch: int = 64) -> np.ndarray:
    """d of the texts `rows` (in their order), computed in batches of neighbours in length."""
    out = np.empty(len(rows), dtype=np.float32)
    order = np.argsort([len(states[i]) for i in rows], kind="stable")
    branch.eval()
    with torch.no_grad():
        for k in range(0, len(order), batch):
            part = order[k : k + batch]
            out[part] = branch(*_batch(states, response, rows[part])).numpy()
    return out


def choose_figures(scores: np.ndarray, expert: dict, defect: dict) -> dict:
    """On a split: expert agreement and per kind the share of real answers above their copies, and its mean over
    kinds (of the shares unrounded)."""
    from car_onnx.evaluate import preferred_by_kind

    from .train import PairData, agreement

    kinds = preferred_by_kind(scores[defect["real"]], scores[defect["bad"]], defect["kind"])
    return {
        "agreement": round(agreement(scores, PairData(expert["better"], expert["worse"])), 4),
        "defects": {k: round(share, 4) for k, (_, share) in kinds.items()},
        "mean": round(float(np.mean([share for _, share in kinds.values()])), 4),
    }


def _with_terms(base: np.ndarray, branch: TunedBranch, states, response, rows: np.ndarray) -> np.ndarray:
    """`base` with the branch's d added at `rows`."""
    scores = base.copy()
    scores[rows] += terms_of(branch, states, response, rows)
    return scores


def fit_tuned(
    layers: list[nn.Module],
    states: list[np.ndarray],
    response: list[np.ndarray],
    base: np.ndarray,
    expert: dict,
    defect: dict,
    *,
    seed: int,
    steps: int = RECIPE["steps"],
    log=print,
) -> tuple[TunedBranch, dict]:
    """Train a TunedBranch on copies of `layers` (the encoder's last ones), the texts' `states` below them ([tokens,
    H] each; those of texts not in `expert` or `defect` may be None), their `response` masks and the base head's
    scores `base`; `expert`/`defect`: the fit and choose splits' pairs (train.train_head's). Returns the branch at
    the step kept (see the module's docstring) and the figures of every step measured."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    branch = TunedBranch(layers)
    nn.init.zeros_(branch.net[2].weight)  # d starts at 0: the base head's score
    nn.init.zeros_(branch.net[2].bias)
    optimiser = torch.optim.AdamW(
        [
            {"params": branch.layers.parameters(), "lr": RECIPE["lr"]},
            {"params": branch.net.parameters(), "lr": RECIPE["net_lr"]},
        ],
        weight_decay=RECIPE["weight_decay"],
    )
    lengths = np.array([0 if s is None else len(s) for s in states])
    pairs = {
        "defect": (defect["fit"]["real"], defect["fit"]["bad"], RECIPE["defect_batch"]),
        "expert": (expert["fit"]["better"], expert["fit"]["worse"], RECIPE["expert_batch"]),
    }
    by_length = {name: np.argsort(lengths[a] + lengths[b], kind="stable") for name, (a, b, _) in pairs.items()}

    def draw(name):  # `size` random pairs among neighbours in length (less padding)
        a, b, size = pairs[name]
        order = by_length[name]
        width = min(len(order), size * RECIPE["neighbours"])
        rows = order[rng.integers(len(order) - width + 1) + rng.choice(width, size=min(size, width), replace=False)]
        return a[rows], b[rows]

    choose_rows = np.unique(
        np.concatenate(
            [expert["choose"][k] for k in ("better", "worse")] + [defect["choose"][k] for k in ("real", "bad")]
        )
    )
    base_figures = choose_figures(base, expert["choose"], defect["choose"])
    log(f"tuned branch: choose split of the base head: {base_figures}")
    history, kept = [], {}
    start = time.perf_counter()
    base_t = torch.from_numpy(base.astype(np.float32))
    for step in range(1, steps + 1):
        branch.train()
        (real, bad), (better, worse) = draw("defect"), draw("expert")
        rows = np.concatenate([real, bad, better, worse])
        d = branch(*_batch(states, response, rows))
        s = base_t[rows] + d
        nd, ne = len(real), len(better)
        defect_loss = torch.relu(RECIPE["margin"] - (s[:nd] - s[nd : 2 * nd])).mean()
        gap = s[2 * nd : 2 * nd + ne] - s[2 * nd + ne :]
        expert_loss = nn.functional.softplus(-RECIPE["sharpness"] * gap).mean() / RECIPE["sharpness"]
        pull = torch.cat([d[:nd], d[2 * nd :]]).square().mean()
        loss = defect_loss + expert_loss + RECIPE["real_weight"] * pull
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % RECIPE["every"] and step != steps:
            continue
        figures = choose_figures(
            _with_terms(base, branch, states, response, choose_rows), expert["choose"], defect["choose"]
        )
        history.append({"step": step, "seconds": round(time.perf_counter() - start)} | figures)
        kept[step] = copy.deepcopy(branch.state_dict())
        log(f"tuned branch: step {step}: {history[-1]}")
    # the best mean among the steps that keep the base head's agreement; where none does, the best agreement
    best = max(history, key=lambda h: (h["agreement"] >= base_figures["agreement"], h["mean"]))
    if best["agreement"] < base_figures["agreement"]:
        best = max(history, key=lambda h: (h["agreement"], h["mean"]))
    branch.load_state_dict({k: v.half().float() for k, v in kept[best["step"]].items()})  # as stored: fp16
    branch.eval()
    best = {"step": best["step"]} | choose_figures(
        _with_terms(base, branch, states, response, choose_rows), expert["choose"], defect["choose"]
    )
    log(f"tuned branch: kept step {best['step']} (weights in fp16): {best}")
    return branch, {"recipe": RECIPE, "steps": steps, "base_choose": base_figures, "kept": best, "history": history}
