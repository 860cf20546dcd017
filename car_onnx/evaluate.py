"""`car-onnx eval`: how a bundle's scorer ranks on the user's own data, before a curator trusts it.

Two measures: expert agreement (the share of pairs in which the better text outscores the worse, on pairs in the
paper's CSV formats) and the defect table (for each kind of corruption in `defects`, the share of records whose
real answer outscores a corrupted copy of it).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .core.defects import KINDS, corrupt
from .errors import InputError
from .runtime.manifest import Template


@dataclass(frozen=True)
class Text:
    """A record's three texts (what `Model.score` reads)."""

    instruction: str
    input: str
    output: str


def _pattern(template: str) -> re.Pattern:
    parts = re.split(r"(\{instruction\}|\{input\}|\{output\})", template)
    groups = {"{instruction}": "(?P<instruction>.*?)", "{input}": "(?P<input>.*?)", "{output}": "(?P<output>.*)"}
    return re.compile("".join(groups.get(p, re.escape(p)) for p in parts), re.DOTALL)


def parse_text(template: Template, text: str) -> Text | None:
    """The record that renders to `text` under `template` (None where none does)."""
    for form in (template.with_input, template.without_input):  # the form with more fields first
        if form is None:
            continue
        found = _pattern(form).fullmatch(text)
        if found:
            d = found.groupdict()
            record = Text(d["instruction"], d.get("input", ""), d["output"])
            if template.render(record.instruction, record.input, record.output) == text:
                return record
    return None


def read_pairs(path, template: Template) -> tuple[list[Text], list[Text]]:
    """(better, worse) records of the pairs in `path`: `src,score` rows in consecutive pairs (the paper's format,
    higher score = better) or `src,pos,neg` triplets (pos better), each text in the bundle's template."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(path, None, f"cannot read: {err}") from None
    texts: list[tuple[int, str, int, str]] = []  # (line, better, line, worse)
    if {"src", "pos", "neg"} <= set(header):
        texts = [(n, row["src"] + row["pos"], n, row["src"] + row["neg"]) for n, row in enumerate(rows, 2)]
    elif {"src", "score"} <= set(header):
        if len(rows) % 2:
            raise InputError(path, None, f"{len(rows)} rows: src,score data must come in consecutive pairs")
        for i in range(0, len(rows), 2):
            a, b = rows[i], rows[i + 1]
            try:
                sa, sb = float(a["score"]), float(b["score"])
            except ValueError:
                raise InputError(path, f"line {i + 2}", "score must be a number", "score") from None
            if sa == sb:
                raise InputError(path, f"line {i + 2}", "the two rows of a pair have the same score", "score")
            texts.append((i + 2, a["src"], i + 3, b["src"]) if sa > sb else (i + 3, b["src"], i + 2, a["src"]))
    else:
        raise InputError(path, "line 1", f"expected columns src,score or src,pos,neg, got {','.join(header)}")
    if not texts:
        raise InputError(path, None, "no pairs")
    better, worse = [], []
    for line_b, text_b, line_w, text_w in texts:
        for side, line, text in ((better, line_b, text_b), (worse, line_w, text_w)):
            record = parse_text(template, text)
            if record is None:
                raise InputError(
                    path,
                    f"line {line}",
                    f"the text does not follow the bundle's template {template.with_input!r}",
                    "src",
                )
            side.append(record)
    return better, worse


def agreement(model, path) -> dict:
    """Expert agreement of `model` (a car_onnx.Model) on the pairs in `path`; a tie counts as a miss."""
    template = model.manifest.model_for("score").template
    better, worse = read_pairs(path, template)
    scores = model.run(better + worse, ("score",))["score"]
    n = len(better)
    return {"pairs": n, "agreement": float((scores[:n] > scores[n:]).mean())}


def defect_table(model, records, *, seed: int = 0, foreign: list[str] | None = None, kinds=KINDS) -> dict:
    """For each kind of defect: how many records it applied to and the share whose real answer `model` scores
    above the corrupted copy (a tie counts as a miss). `records`: objects with instruction, input and output."""
    records = [Text(r.instruction, r.input, r.output) for r in records]
    broken = corrupt(records, kinds, seed=seed, phrases="eval", foreign=foreign)
    copies = [Text(records[c.index].instruction, records[c.index].input, c.output) for c in broken]
    scores = model.run(records + copies, ("score",))["score"]
    index = np.array([c.index for c in broken], dtype=np.int64)
    found = preferred_by_kind(scores[index], scores[len(records) :], np.array([c.kind for c in broken]))
    return {kind: {"records": n, "preferred": share} for kind, (n, share) in found.items()}


def preferred_by_kind(real: np.ndarray, bad: np.ndarray, kinds: np.ndarray) -> dict[str, tuple[int, float]]:
    """For each kind that `kinds` holds, those of KINDS first in its order, then any other in order of appearance:
    (pairs, share of pairs with real > bad); a tie is a miss."""
    others = [k for k in dict.fromkeys(kinds.tolist()) if k not in KINDS]
    return {
        k: (int((kinds == k).sum()), float((real[kinds == k] > bad[kinds == k]).mean()))
        for k in [*KINDS, *others]
        if (kinds == k).any()
    }
