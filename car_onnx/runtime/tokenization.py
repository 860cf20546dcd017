"""Tokenization with the `tokenizers` library and token-budget batching over length-sorted records."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BundleError

# Rows x longest row of one batch. Small batches of similar length keep activations in cache: on 2 AVX2 cores,
# 2048 ran 15% faster than 16384 on real records, with less memory.
DEFAULT_MAX_TOKENS = 2048
# On CUDA larger batches keep the GPU busy: on an H200 the default bundle's fp16 ran 2571 records/s at 2048,
# 6802 at 32768 and 8198 at 131072; the full-size IQS's 1697, 2217 and 1468 (benchmarks/results/gpu.json).
CUDA_MAX_TOKENS = 32768


def default_max_tokens(device: str) -> int:
    """The token budget of one batch where none is given, for a resolved device (cpu or cuda)."""
    return CUDA_MAX_TOKENS if device == "cuda" else DEFAULT_MAX_TOKENS


def load_tokenizer(path, max_length: int):
    """Load tokenizer.json and override whatever padding/truncation it carries: truncate to the model's
    limit, pad nothing here (batches are padded to their own longest row by `pad_batch`)."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception on a malformed file
        raise BundleError(f"{path}: cannot load tokenizer ({' '.join(str(err).split())[:200]})") from None
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    return tok


class Clipper:
    """Cuts a long text before it is tokenized, so that a giant field costs no more than `max_length` tokens'
    worth of work, yet yields the same tokens. A cut is kept only when the tokenizer shows it is safe: the first
    `max_length` tokens of the cut text all come from words (pre-tokens) before its last two, which a cut further on
    cannot change (normalizers and pre-tokenizers of WordPiece, byte-level BPE and Metaspace act locally);
    otherwise the cut moves twice as far out, up to the whole text."""

    MARGIN = 2

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length
        self.start = max_length * max(map(len, tokenizer.get_vocab())) * self.MARGIN  # characters
        self._counter = None

    def __call__(self, text: str) -> str:
        cut = self.start
        while cut < len(text):
            if self._safe(text[:cut]):
                return text[:cut]
            cut *= 2
        return text

    def _safe(self, prefix: str) -> bool:
        if self._counter is None:  # the same tokenizer, not truncated: to see past max_length
            from tokenizers import Tokenizer

            self._counter = Tokenizer.from_str(self.tokenizer.to_str())
            self._counter.no_truncation()
        words = [w for w in self._counter.encode(prefix).word_ids if w is not None]
        return bool(words) and sum(w < words[-1] - 1 for w in words) >= self.max_length


@dataclass
class Tokens:
    """Unpadded token ids of a list of texts, in the texts' order; with response starts, also each text's response
    mask (1 for a token of the response, 0 for the prompt and the special tokens)."""

    ids: list[np.ndarray]
    response: list[np.ndarray] | None = None

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))


def tokenize(tokenizer, texts: list[str], starts: list[int] | None = None) -> Tokens:
    """Token ids of `texts`; with `starts` (where each text's response begins, in characters) the response masks:
    a token is the response's when its first character is at or after the start."""
    encodings = tokenizer.encode_batch(texts)
    ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
    if starts is None:
        return Tokens(ids)
    response = []
    for e, start in zip(encodings, starts):
        first = np.fromiter((a for a, _ in e.offsets), dtype=np.int64, count=len(e.ids))
        response.append(((first >= start) & (np.asarray(e.special_tokens_mask) == 0)).astype(np.int64))
    return Tokens(ids, response)


def plan_batches(lengths: np.ndarray, max_tokens: int, max_batch: int = 256) -> list[np.ndarray]:
    """Group row numbers into batches of similar length: sorted by length (stable), each batch's padded size
    (rows x longest row) kept within `max_tokens` (a single row longer than the budget gets its own batch)."""
    order = np.argsort(lengths, kind="stable")
    batches, start = [], 0
    for end in range(1, len(order) + 1):
        rows = end - start
        if end < len(order) and rows < max_batch and (rows + 1) * lengths[order[end]] <= max_tokens:
            continue
        batches.append(order[start:end])
        start = end
    return batches


def pad_batch(ids: list[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad to the longest row: (input_ids, attention_mask), both int64."""
    input_ids = pad_rows(ids, pad_id)
    mask = np.zeros_like(input_ids)
    for row, x in enumerate(ids):
        mask[row, : len(x)] = 1
    return input_ids, mask


def pad_rows(rows: list[np.ndarray], value: int) -> np.ndarray:
    """Rows of int64 right-padded with `value` to the longest."""
    out = np.full((len(rows), max(len(x) for x in rows)), value, dtype=np.int64)
    for row, x in enumerate(rows):
        out[row, : len(x)] = x
    return out
