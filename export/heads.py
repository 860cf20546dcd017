"""COMET-style scoring head in PyTorch: layer-wise mix of hidden states, pooling, feed-forward regressor.

Shared by the IQS checkpoint export and the default bundle's scorer. Semantics follow docs/car-method.md:
layer norm is computed per sentence over its non-pad positions, so a score never depends on its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

POOLS = ("avg", "max", "cls", "default")
MIXES = ("softmax", "sparsemax")
ACTIVATIONS = {"Tanh": nn.Tanh, "ReLU": nn.ReLU, "Sigmoid": nn.Sigmoid, "GELU": nn.GELU, "Identity": nn.Identity}


def sparsemax(z: torch.Tensor) -> torch.Tensor:
    """Sparsemax of a 1-D tensor (Martins & Astudillo 2016): the Euclidean projection onto the simplex."""
    zs, _ = torch.sort(z, descending=True)
    k = torch.arange(1, len(z) + 1, dtype=z.dtype)
    cumsum = zs.cumsum(0)
    support = 1 + k * zs > cumsum
    k_z = support.sum()
    tau = (cumsum[k_z - 1] - 1) / k_z
    return torch.clamp(z - tau, min=0)


@dataclass(frozen=True)
class HeadConfig:
    """What a COMET hparams file can say about the head."""

    hidden: int  # encoder hidden size
    num_layers: int  # hidden states mixed: embeddings + each layer
    layer: str | int = "mix"
    mix: str = "sparsemax"  # layer_transformation
    layer_norm: bool = False
    pool: str = "avg"
    hidden_sizes: tuple[int, ...] = (2048, 1024)
    activation: str = "Tanh"
    final_activation: str | None = None
    dropout: float = 0.1

    def __post_init__(self):
        if self.mix not in MIXES:
            raise ValueError(f"layer_transformation must be one of {MIXES}, got {self.mix!r}")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {self.pool!r}")
        if self.layer != "mix" and not (isinstance(self.layer, int) and 0 <= self.layer < self.num_layers):
            raise ValueError(f"layer must be 'mix' or an integer in [0, {self.num_layers}), got {self.layer!r}")
        for name in (self.activation, self.final_activation):
            if name is not None and name not in ACTIVATIONS:
                raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")


class LayerwiseAttention(nn.Module):
    """gamma * sum_i w_i * h_i with w = softmax/sparsemax(s); optional per-sentence layer norm of each h_i."""

    def __init__(self, num_layers: int, mix: str = "sparsemax", layer_norm: bool = False):
        super().__init__()
        self.mix, self.layer_norm = mix, layer_norm
        self.scalar_parameters = nn.ParameterList([nn.Parameter(torch.zeros(1)) for _ in range(num_layers)])
        self.gamma = nn.Parameter(torch.ones(1))
        self.frozen: torch.Tensor | None = None  # constant weights for export (see `freeze`)

    def weights(self) -> torch.Tensor:
        if self.frozen is not None:
            return self.frozen
        s = torch.cat(list(self.scalar_parameters))
        return torch.softmax(s, dim=0) if self.mix == "softmax" else sparsemax(s)

    def freeze(self) -> None:
        """At inference w is a constant: compute it once so the exported graph holds no sort/softmax."""
        self.frozen = None
        self.frozen = self.weights().detach().clone()

    def forward(self, hidden_states, mask: torch.Tensor) -> torch.Tensor:
        w = self.weights()
        if self.layer_norm:
            m = mask.to(hidden_states[0].dtype).unsqueeze(-1)  # [B, T, 1]
            count = m.sum(dim=(1, 2), keepdim=True) * hidden_states[0].shape[-1]

            def norm(h):
                mean = (h * m).sum(dim=(1, 2), keepdim=True) / count
                var = (((h - mean) * m) ** 2).sum(dim=(1, 2), keepdim=True) / count
                return (h - mean) / torch.sqrt(var + 1e-12)

            hidden_states = [norm(h) for h in hidden_states]
        return self.gamma * sum(w[i] * h for i, h in enumerate(hidden_states))


def pool(
    kind: str, mixed: torch.Tensor, last: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor, pad_id: int
) -> torch.Tensor:
    """COMET's pooling: pad positions are those whose token id is the pad id."""
    if kind == "cls":
        return mixed[:, 0]
    if kind == "default":
        return last[:, 0]
    keep = input_ids.ne(pad_id).unsqueeze(-1)
    if kind == "max":
        return mixed.masked_fill(~keep, float("-inf")).max(dim=1).values
    return mixed.masked_fill(~keep, 0.0).sum(dim=1) / mask.to(mixed.dtype).sum(dim=1, keepdim=True)


class FeedForward(nn.Module):
    """Linear - act - Dropout - ... - Linear(1), indexed like COMET's `estimator.ff.<j>`."""

    def __init__(self, in_dim: int, hidden_sizes, activation: str, final_activation: str | None, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        dims = [in_dim, *hidden_sizes]
        for a, b in zip(dims, dims[1:]):
            layers += [nn.Linear(a, b), ACTIVATIONS[activation](), nn.Dropout(dropout)]
        layers.append(nn.Linear(dims[-1], 1))
        if final_activation is not None:
            layers.append(ACTIVATIONS[final_activation]())
        self.ff = nn.Sequential(*layers)

    def forward(self, x):
        return self.ff(x)


class ScoringHead(nn.Module):
    """Hidden states -> one score per sentence."""

    def __init__(self, cfg: HeadConfig, pad_id: int):
        super().__init__()
        self.cfg, self.pad_id = cfg, pad_id
        self.layerwise_attention = LayerwiseAttention(cfg.num_layers, cfg.mix, cfg.layer_norm)
        self.estimator = FeedForward(cfg.hidden, cfg.hidden_sizes, cfg.activation, cfg.final_activation, cfg.dropout)

    def forward(self, hidden_states, input_ids, mask):
        if self.cfg.layer == "mix":
            mixed = self.layerwise_attention(hidden_states, mask)
        else:
            mixed = hidden_states[self.cfg.layer]
        sentemb = pool(self.cfg.pool, mixed, hidden_states[-1], input_ids, mask, self.pad_id)
        return self.estimator(sentemb).squeeze(-1)


class PooledHead(nn.Module):
    """The ScoringHead applied to pre-pooled layers: gamma * sum_i w_i * pooled_i, then the feed-forward."""

    def __init__(self, head: ScoringHead):
        super().__init__()
        self.head = head

    def forward(self, pooled):  # [b, layers, hidden]
        w = self.head.layerwise_attention.weights()
        mixed = self.head.layerwise_attention.gamma * (w[None, :, None] * pooled).sum(1)
        return self.head.estimator(mixed).squeeze(-1)


# ---------------------------------------------------------------- the defect-aware scorer


def span_mean(h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """[B, T, H] averaged over the positions where weight ([B, T], 0/1) is 1; zeros for an empty span."""
    w = weight.unsqueeze(-1)
    return (h * w).sum(1) / w.sum(1).clamp(min=1.0)


def trigram_rates(input_ids: torch.Tensor, response: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """[B, 2]: the share of the response's token trigrams seen earlier in the response (loops) and the share seen
    in the prompt (echoes). Exact token matches: T x T comparisons, small beside the encoder."""
    a, b, c = input_ids[:, :-2], input_ids[:, 1:-1], input_ids[:, 2:]
    rt = response[:, :-2] * response[:, 1:-1] * response[:, 2:]  # trigrams wholly in the response
    pt = prompt[:, :-2] * prompt[:, 1:-1] * prompt[:, 2:]
    same = (
        (a.unsqueeze(2) == a.unsqueeze(1)) & (b.unsqueeze(2) == b.unsqueeze(1)) & (c.unsqueeze(2) == c.unsqueeze(1))
    ).to(response.dtype)  # [B, i, j]
    pos = torch.arange(a.shape[1], device=a.device)
    earlier = (pos.unsqueeze(1) > pos.unsqueeze(0)).to(response.dtype)  # j < i
    loop = (same * earlier * rt.unsqueeze(1)).sum(-1).clamp(max=1.0) * rt
    echo = (same * pt.unsqueeze(1)).sum(-1).clamp(max=1.0) * rt
    n = rt.sum(1).clamp(min=1.0)
    return torch.stack([loop.sum(1) / n, echo.sum(1) / n], 1)


PACK_BITS = 15  # run_rate packs 4 token ids in one int64: a vocabulary below 2 ** 15 ids (all-MiniLM's: 30,522)


def run_rate(input_ids: torch.Tensor, response: torch.Tensor, n: int, bits: int = PACK_BITS) -> torch.Tensor:
    """[B]: the share of the response's runs of `n` tokens seen earlier in the response (a sentence or paragraph
    repeated: runs of 8 flag it where trigrams, which a real answer's own phrases repeat, cannot; the answer's
    runtime count, `answer_loops`, is the same over a whole answer). Token ids below 2 ** `bits` are packed
    60 // `bits` to an integer (4 of 15 bits, 3 of 17), so that one T x T comparison of packs (at offsets 0, p, 2p,
    ... and n - p, p ids a pack) compares runs; `n` is at least p."""
    per = 60 // bits
    # n - 1 positions more, of no token (a run reaching past the end is never inside the response); built with cat:
    # an exported pad reverses its constant with a Slice the exporter then warns it cannot fold
    ids = torch.cat([input_ids, (input_ids[:, :1] * 0 + (1 << bits) - 1).repeat(1, n - 1)], 1)
    resp = torch.cat([response, (response[:, :1] * 0).repeat(1, n - 1)], 1)
    packs = sum(ids[:, k : k - (per - 1) or None] * (1 << (bits * k)) for k in range(per))  # [B, T + n - per]
    equal = packs.unsqueeze(2) == packs.unsqueeze(1)
    same = None
    for o in sorted({*range(0, n - per, per), n - per}):
        end = o - (n - per) or None  # constant ends, counted from the end (the exporter folds no others)
        part = equal[:, o:end, o:end]
        same = part if same is None else same & part
    inside = resp[:, : 1 - n or None]
    for k in range(1, n):
        inside = inside * resp[:, k : k - (n - 1) or None]
    pos = torch.arange(inside.shape[1], device=input_ids.device)
    earlier = pos.unsqueeze(1) > pos.unsqueeze(0)
    seen = ((same & earlier).to(response.dtype) * inside.unsqueeze(1)).amax(-1) * inside
    return seen.sum(1) / inside.sum(1).clamp(min=1.0)


def span_cosines(
    pool, input_ids, attention_mask, response_mask, max_length: int, answer_loops=None, runs: int = 0, bits=PACK_BITS
) -> torch.Tensor:
    """[B, L + 6]: what the defect part of the score reads. `pool(weight)` gives [B, L, H] vectors of the text
    restricted to a span (weight [B, T], 0/1): the cosine of the prompt's and the response's vector at each of the L
    levels, then the loop and echo trigram rates, the log lengths of response and prompt, whether the text hit the
    token limit and whether the response is empty; with `runs`, also the share of the response's runs of that many
    tokens seen earlier in it (`run_rate`, token ids below 2 ** `bits`: [B, L + 7]). `answer_loops` ([B]: the share
    of repeated 8-token runs of the whole answer a window was cut from, runtime/reading.py; 0 for a text that fits)
    replaces the loop rate, and the runs' share, where higher."""

    def whole_answer(rate):
        return rate if answer_loops is None else torch.maximum(rate, answer_loops.to(rate.dtype))

    mask = attention_mask.to(torch.float32)
    response = response_mask.to(torch.float32) * mask
    prompt = mask - response
    cos = nn.functional.cosine_similarity(pool(prompt), pool(response), dim=2, eps=1e-6)
    rates = trigram_rates(input_ids, response, prompt)
    n_resp, n_prompt = response.sum(1), prompt.sum(1)
    counts = [
        whole_answer(rates[:, 0]),
        rates[:, 1],
        torch.log1p(n_resp) / 5,
        torch.log1p(n_prompt) / 5,
        (mask.sum(1) >= max_length).to(mask.dtype),
        (n_resp == 0).to(mask.dtype),
    ]
    if runs:
        counts.append(whole_answer(run_rate(input_ids, response, runs, bits)))
    counts = torch.stack(counts, 1)
    return torch.cat([cos, counts], 1)


SEGMENT_ENDS = (".", "!", "?", ";")  # the tokens that close a segment of a response (RefusalReader)
SEGMENT_ENDS_CJK = SEGMENT_ENDS + ("\u3002",)  # and the ideographic full stop, where a vocabulary has it


def segment_means(states, input_ids, response, ends) -> tuple[torch.Tensor, torch.Tensor]:
    """The unit-length mean of the states of each segment of the responses ([B, S, H]: a segment is a run of
    response tokens closed by one of the token ids `ends`, or by the response's end; S the most segments of a
    response in the batch) and each segment's size in tokens ([B, S], 0 where a response has fewer). Costs T x S x H
    multiply-adds: a few per cent of the encoder for the multilingual bundle's 4,096 tokens."""
    closes = (input_ids.unsqueeze(-1) == ends).to(states.dtype).sum(-1) * response
    segment = closes.cumsum(1) - closes  # a closing token belongs to the segment it closes
    count = segment.max() + 1
    member = (segment.unsqueeze(-1) == torch.arange(count, device=segment.device).to(segment.dtype)).to(states.dtype)
    member = member * response.unsqueeze(-1)  # [B, T, S]
    size = member.sum(1)
    mean = torch.matmul(member.transpose(1, 2), states) / size.clamp(min=1).unsqueeze(-1)
    return nn.functional.normalize(mean, dim=-1, eps=1e-6), size


class RefusalReader(nn.Module):
    """Whether a part of the response reads like a refusal, however short beside the rest: the response is cut into
    segments (sentences, list items), and each segment's mean state at each of the given levels is compared with
    what refusals look like there (`fit`, from training copies whose last parts were refused). [B, 2 x levels]: per
    level, the largest cosine of a segment with the refusals' mean, and the largest projection of a segment,
    centred on real answers' segments, on the direction that tells the refusals from them (`fit`). 0 for an empty
    response."""

    def __init__(self, ends: list[int], levels: int, hidden: int):
        super().__init__()
        self.register_buffer("ends", torch.tensor(ends, dtype=torch.int64))
        self.register_buffer("prototype", torch.zeros(levels, hidden))
        self.register_buffer("center", torch.zeros(levels, hidden))
        self.register_buffer("direction", torch.zeros(levels, hidden))

    def forward(self, states: list[torch.Tensor], input_ids, response) -> torch.Tensor:
        out = []
        has = response.sum(1) > 0
        for k, level in enumerate(states):
            v, size = segment_means(level, input_ids, response, self.ends)
            # products summed, not MatMuls: int8 export quantises a MatMul with a constant operand
            for x in ((v * self.prototype[k]).sum(-1), ((v - self.center[k]) * self.direction[k]).sum(-1)):
                best = x.masked_fill(size == 0, -1e4).amax(1)
                out.append(torch.where(has, best, torch.zeros_like(best)))
        return torch.stack(out, 1)

    @torch.no_grad()
    def fit(self, refused: list[torch.Tensor], real: tuple[list[torch.Tensor], ...], shrink: float = 0.1) -> None:
        """`refused`: per level, [N, H] unit vectors of the last segments of refused answers; `real`: per level, the
        sums of real answers' unit segment vectors, of their outer products ([H, H]) and their counts of segments
        (`discriminant`; on the MiniLM levels it tells refusals in phrases it was not fitted on from real answers
        better than the difference of the means alone: docs/scorers.md)."""
        for k, (r, (total, outer, count)) in enumerate(zip(refused, zip(*real))):
            self.prototype[k] = nn.functional.normalize(r.mean(0), dim=0)
            self.center[k], self.direction[k] = discriminant(r.mean(0), total, outer, count, shrink)


def discriminant(mean, total, outer, count, shrink: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(centre, direction): linear discriminant analysis of vectors of mean `mean` ([H]) against real ones given by
    their sum ([H]), the sum of their outer products ([H, H]) and their count: the real vectors' mean, and the
    difference of the means through their covariance, shrunk by `shrink` towards its mean variance, unit length."""
    center = (total / count).to(mean.dtype)
    c = center.double()
    cov = outer.double() / count - torch.outer(c, c)
    cov = (1 - shrink) * cov + shrink * cov.trace() / len(c) * torch.eye(len(c), dtype=cov.dtype)
    way = torch.linalg.solve(cov, mean.double() - c).to(mean.dtype)
    return center, nn.functional.normalize(way, dim=0)


# The response tokens the end reader reads (of 1, 3 and 6 on the multilingual features, the best on the choose split:
# docs/scorers.md)
END_TOKENS = 3
ODDS_MIN = 20  # EndReader's token table: the occurrences in real answers a token needs to be read
ODDS_SCALE = 5.0  # and the scale of its log ratios (about -1 to 1, as the other features' ranges)


class EndReader(nn.Module):
    """Whether the response ends as an answer cut mid-sentence does: the unit-length mean of the states of its last
    END_TOKENS tokens at each of the given levels, centred on real answers' ends and projected on the direction that
    tells the ends of cut copies from them (`fit`, `discriminant`); with a `vocab`, also how much likelier its last
    token is to end a real answer than to stand anywhere in one (`fit_odds`: a table of the vocabulary's token ids).
    [B, levels (+ 1)]; 0 for an empty response and for a window that ends before its answer does (`answer_open` 1:
    runtime/reading.py), which is no cut."""

    def __init__(self, levels: int, hidden: int, vocab: int = 0):
        super().__init__()
        self.register_buffer("center", torch.zeros(levels, hidden))
        self.register_buffer("direction", torch.zeros(levels, hidden))
        self.register_buffer("odds", torch.zeros(vocab) if vocab else None)

    def outputs(self) -> int:
        """How many numbers it gives a text."""
        return len(self.center) + (self.odds is not None)

    @staticmethod
    def last_token(response: torch.Tensor) -> torch.Tensor:
        """[B, T]: 1 at the response's last token (nowhere for an empty response). `response`: [B, T] float."""
        return response * (response.cumsum(1) == response.sum(1, keepdim=True)).to(response.dtype)

    @staticmethod
    def last(states: list[torch.Tensor], response: torch.Tensor) -> list[torch.Tensor]:
        """Per level, [B, H]: the unit-length mean of the response's last END_TOKENS token states (zeros where the
        response is empty). `response`: [B, T] float, 1 on the response's tokens."""
        position = response.cumsum(1)  # 1 .. n on a response of n tokens
        weight = response * (position > response.sum(1, keepdim=True) - END_TOKENS).to(response.dtype)
        return [nn.functional.normalize(span_mean(h, weight), dim=-1, eps=1e-6) for h in states]

    def forward(self, states: list[torch.Tensor], response: torch.Tensor, answer_open=None, input_ids=None):
        # products summed, not MatMuls: int8 export quantises a MatMul with a constant operand
        out = [((v - self.center[k]) * self.direction[k]).sum(-1) for k, v in enumerate(self.last(states, response))]
        if self.odds is not None:  # the table's entry for the response's last token
            out.append((self.odds[input_ids] * self.last_token(response)).sum(1))
        keep = (response.sum(1) > 0).to(response.dtype)
        if answer_open is not None:
            keep = keep * (1 - answer_open.to(response.dtype))
        return torch.stack(out, 1) * keep.unsqueeze(1)

    @torch.no_grad()
    def fit(self, cut: list[torch.Tensor], real: list[torch.Tensor], shrink: float = 0.1) -> None:
        """`cut`, `real`: per level, [N, H] `last` vectors of cut copies' and real answers' responses."""
        for k, (c, r) in enumerate(zip(cut, real)):
            r = r.double()
            self.center[k], self.direction[k] = discriminant(c.mean(0), r.sum(0), r.T @ r, len(r), shrink)

    @torch.no_grad()
    def fit_odds(self, ends: torch.Tensor, tokens: torch.Tensor) -> None:
        """`ends`, `tokens`: per token id, how many real answers end with it and how often it occurs in them. The
        table: the log of the ratio of the two shares (each count plus one), over ODDS_SCALE, for the ids seen at
        least ODDS_MIN times; 0 for the others (a token the answers barely show, such as another language's, is
        read as neither)."""
        ends, tokens = ends.double(), tokens.double()
        ratio = torch.log((ends + 1) / ends.sum()) - torch.log((tokens + 1) / tokens.sum())
        self.odds.copy_(torch.where(tokens >= ODDS_MIN, ratio / ODDS_SCALE, torch.zeros_like(ratio)).float())


def prompt_recall(states: list[torch.Tensor], attention_mask, response: torch.Tensor) -> torch.Tensor:
    """How much of the prompt the response takes up, per level ([B, levels]): the mean over the tokens outside the
    response (the first, [CLS], left out; the closing [SEP] counts) of each one's highest cosine with a response token.
    An answer to a near question shares its topic's words with the prompt but not its particulars, and the level below
    the first layer reads them as words (docs/scorers.md). 0 for an empty response. `response`: [B, T] float, 1 on the
    response's tokens. Costs T x T x H multiply-adds a level: about 1% of the encoder at 256 tokens."""
    mask = attention_mask.to(response.dtype)
    first = (torch.arange(mask.shape[1], device=mask.device) > 0).to(mask.dtype)
    prompt = (mask - response) * first
    off = (1 - response).unsqueeze(1) * 4.0  # a cosine is at least -1: no prompt token takes a non-response token's
    out = []
    for h in states:
        u = nn.functional.normalize(h, dim=-1, eps=1e-6)
        best = (torch.matmul(u, u.transpose(1, 2)) - off).max(2).values  # [B, T]: each token's best response token
        out.append((best * prompt).sum(1) / prompt.sum(1).clamp(min=1.0))
    keep = (response.sum(1) > 0).to(response.dtype)
    return torch.stack(out, 1) * keep.unsqueeze(1)


# Points a scorer with defect terms takes off a text whose answer says a part three times or more in a row (the
# runtime's `answer_repeats`, car_onnx.runtime.reading.said_in_place): a rule, not trained; as much as one term's most
REPEATS_PENALTY = 2.0


def repeats_penalty(score: torch.Tensor, answer_repeats: torch.Tensor | None) -> torch.Tensor:
    """`score` less REPEATS_PENALTY where `answer_repeats` is 1; `score` as it is where it is not given (the export's
    reference runs, which the runtime's check feeds 0)."""
    return score if answer_repeats is None else score - REPEATS_PENALTY * answer_repeats.to(score.dtype)


def _net(features: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
    )


class DefectPart(nn.Module):
    """The score's defect term, from a few numbers per text (`span_cosines`, and `RefusalReader`'s where the bundle
    has one), which say how the response relates to the instruction (off-topic, echoed), loops, cut-offs, refused
    parts and empty answers, none of which the quality head, trained on polished pairs only, ever saw. Each member
    gives a penalty of up to `scale` as the probability P that the record is defective goes from 1/2 to 1 (nothing
    for a record more likely real than not); the term is the members' mean. Training holds it at zero on the expert
    texts (export/train.py)."""

    def __init__(
        self, features: int, hidden: int = 64, scale: float = 2.0, members: int = 1, columns: list[int] | None = None
    ):
        super().__init__()
        self.nets = nn.ModuleList(_net(features, hidden) for _ in range(members))
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.columns = None if columns is None else [int(c) for c in columns]  # the features it reads (None: all)

    @classmethod
    def ensemble(cls, parts: list["DefectPart"]) -> "DefectPart":
        """One term averaging single-member `parts` (of one shape)."""
        first = parts[0]
        features, hidden = first.nets[0][0].in_features, first.nets[0][0].out_features
        out = cls(features, hidden, float(first.scale), len(parts), first.columns)
        for k, part in enumerate(parts):
            out.nets[k].load_state_dict(part.nets[0].state_dict())
        return out.eval()

    def logits(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Each member's output ([B]): the log-odds that the text is defective."""
        if self.columns is not None:
            features = features[:, self.columns]
        x = features * 4 - 2
        return [net(x).squeeze(-1) for net in self.nets]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        total = 0
        for logit in self.logits(features):  # -scale * max(0, 2 P - 1), P = sigmoid(logit)
            total = total - self.scale * torch.relu(torch.tanh(logit / 2))
        return total / len(self.nets)


def refusal_term_columns(features: int, reader_levels: int) -> list[int]:
    """The features a refusal term reads (train-scorer --refusal-term): the refusal reader's numbers, the last
    2 x `reader_levels` of `features`."""
    return list(range(features - 2 * reader_levels, features))
