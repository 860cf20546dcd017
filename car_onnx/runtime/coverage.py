"""Vocabulary coverage: the share of a job's tokens that a bundle's tokenizer maps to its unknown token, and the
warning when it is too high (the English-only default bundle on Chinese text reads a third of it as [UNK])."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

# Above 5% unknown tokens the models are not reading the data. Measured on 2,000 records of each shared corpus
# (benchmarks/multilingual.py): English, under 0.001% with either bundle; Chinese, 59% with the default bundle's
# WordPiece and 0.5% with the multilingual bundle. 5% sits far from both sides: a few emoji, symbols or foreign
# names in English data stay well below it, a language the vocabulary lacks is far above it.
UNKNOWN_SHARE_LIMIT = 0.05


def unknown_id(tokenizer) -> int | None:
    """The id of the tokenizer's unknown token (WordPiece/WordLevel/BPE `unk_token`, Unigram `unk_id`), or None."""
    model = json.loads(tokenizer.to_str())["model"]
    if model.get("unk_id") is not None:
        return int(model["unk_id"])
    if model.get("unk_token") is not None:
        return tokenizer.token_to_id(model["unk_token"])
    return None


@dataclass
class Coverage:
    """Counts of unknown and of all text tokens (the tokens the post-processor adds, such as [CLS], left out)."""

    unknown: int = 0
    tokens: int = 0

    def add(self, ids: list[np.ndarray], unk_id: int | None, added_per_text: int) -> None:
        if unk_id is None:
            return
        self.unknown += sum(int(np.count_nonzero(x == unk_id)) for x in ids)
        self.tokens += sum(len(x) for x in ids) - added_per_text * len(ids)

    @property
    def share(self) -> float:
        return self.unknown / self.tokens if self.tokens else 0.0


def coverage_warning(model: str, coverage: Coverage, limit: float = UNKNOWN_SHARE_LIMIT) -> str | None:
    """The warning for a model whose tokenizer could not read more than `limit` of the job's tokens."""
    if coverage.share <= limit:
        return None
    return (
        f"model '{model}' maps {100 * coverage.share:.1f}% of this job's {coverage.tokens} tokens to its unknown "
        f"token: it cannot read this data's language (for Chinese and 15 other languages build the multilingual "
        f"bundle with `car-onnx export multilingual` and pass it with --bundle)"
    )


def coverage_warnings(models) -> list[str]:
    """The warnings of the models (OnnxModel objects) that ran in a job, each model once."""
    found = (coverage_warning(m.spec.name, m.coverage) for m in dict.fromkeys(models))
    return [w for w in found if w]
