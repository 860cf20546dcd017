"""Corrupted copies of real records: the junk scraped and generated instruction data really holds.

Each kind turns a record's answer into a defective one (another question's answer, the instruction or the input
echoed, a cut, a loop, another language, an empty or boilerplate answer) while the instruction stays. The scorer is
trained to rank the real answer above every kind (`car-onnx train-scorer`) and `car-onnx eval` measures how often it
does.
Pure Python and scikit-learn: the runtime uses it without torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

# Kinds in the order tables show them. `foreign` needs texts in another language (see `corrupt`).
KINDS = (
    "other_random",
    "other_near",
    "echo",
    "restate",
    "echo_input",
    "cut_quarter",
    "cut_half",
    "cut_sentence",
    "loop_whole",
    "loop_paragraph",
    "loop_ngram",
    "foreign",
    "empty",
    "boilerplate",
    "refuse_part",
)
MIN_WORDS = 12  # cuts and loops need an answer of at least this many words (a short one has nothing to cut)

# Two disjoint sets of phrases: training sees one, measuring the other, so a measure is not a memory of a phrase.
BOILERPLATE = {
    "train": (
        "I'm sorry, but I can't help with that.",
        "As an AI language model, I cannot complete this request.",
        "N/A",
        "Sure! Here is the answer:",
        "I don't know.",
        "<noinput>",
        "Response:",
        "Output:",
        "Thank you for your question.",
        "This is a great question!",
        "Lorem ipsum dolor sit amet.",
        "Please provide more information.",
        "TODO",
        "undefined",
        "I cannot answer that.",
        "Answer",
    ),
    "eval": (
        "I apologize, but I am unable to assist with this request.",
        "As an AI, I don't have an answer.",
        "None",
        "Here you go:",
        "Not sure.",
        "<nooutput>",
        "Result:",
        "null",
        "Good question.",
        "I need more details to answer.",
        "Error: request failed.",
        "See above.",
        "...",
    ),
}
# Refusals put in place of the last parts of an answer (kind `refuse_part`). "I don't know." is in neither set: the
# whole-records benchmark measures it (benchmarks/whole_records.py).
REFUSALS = {
    "train": (
        "I'm sorry, but I can't help with that.",
        "I cannot answer that.",
        "N/A",
        "TODO",
        "As an AI language model, I cannot complete this request.",
        "Please provide more information.",
        "Unknown.",
        "Sorry, I can't provide that.",
        "I'm unable to answer this part.",
        "No answer available.",
        "This is beyond what I can answer.",
        "I won't be able to help with this one.",
        "[missing]",
        "Skipped.",
        "Information not available.",
        "I cannot say.",
        "Left as an exercise for the reader.",
        "Unfortunately, I cannot provide an answer to this.",
        "I'd rather not answer this.",
        "(no response)",
        "Cannot be determined.",
        "etc.",
        "To be completed.",
    ),
    "eval": (
        "Not sure.",
        "I apologize, but I am unable to assist with this request.",
        "I need more details to answer.",
        "None",
        "...",
        "As an AI, I don't have an answer.",
    ),
}
RESTATE = {
    "train": (
        "You want me to {t}",
        "The task is: {t}",
        'Here is my answer to "{t}"',
        "{t} Let me think.",
        "Question: {t}",
        "In this task, {t}",
        "Your request: {t}",
        "{t} Here is what I will do.",
        "Instruction: {t}",
        "Okay. {t}",
        "The question was: {t}",
        "{t} Sure.",
        "Here is the task again: {t}",
    ),
    "eval": (
        "You asked: {t}",
        "I will now {t}",
        "Task received: {t}",
        "{t} That is the request.",
        "Restating the instruction: {t}",
    ),
}


@dataclass(frozen=True)
class Corrupted:
    """A defective copy of record `index`: the same instruction and input, `output` replaced."""

    index: int
    kind: str
    output: str


def _words(text: str) -> list[str]:
    return text.split()


def _cut_words(text: str, fraction: float) -> str:
    """The text's first `fraction` of its words, cut mid-sentence (the last word kept whole)."""
    spans = [m.end() for m in re.finditer(r"\S+", text)]
    keep = max(1, int(len(spans) * fraction))
    return text[: spans[keep - 1]]


def _sentences(text: str) -> list[str]:
    """The text split after ., ! or ? followed by space, or at line breaks; separators kept with each part."""
    parts = re.split(r"(?<=[.!?])(\s+)|(\n+)", text)
    out, current = [], ""
    for part in parts:
        if part is None:
            continue
        current += part
        if part.strip() == "" and current.strip():
            out.append(current)
            current = ""
    if current.strip():
        out.append(current)
    return out


def _parts(text: str) -> list[str]:
    """The answer's parts: its lines where it has at least three, else its sentences; separators kept."""
    lines = re.split(r"(?<=\n)(?=[^\n])", text)
    return lines if sum(1 for line in lines if line.strip()) >= 3 else _sentences(text)


def _refuse_tail(text: str, rng, phrases: str) -> str | None:
    """The answer with its last parts (one to half of them) each replaced by a refusal, any list marker kept."""
    parts = _parts(text)
    if len(parts) < 3:
        return None
    k = int(rng.integers(1, len(parts) // 2 + 1))
    refusal = REFUSALS[phrases][rng.integers(len(REFUSALS[phrases]))]
    tail = []
    for part in parts[-k:]:
        marker = re.match(r"\s*(\d+[.)]|[-*\u2022])?\s*", part).group(0)
        end = part[len(part.rstrip()) :]
        tail.append(marker + refusal + end)
    return "".join(parts[:-k] + tail).rstrip()


def nearest_other(instructions: list[str], outputs: list[str]) -> np.ndarray:
    """For each record, the record whose instruction is most alike (TF-IDF cosine of words and word pairs) among
    those with another answer; -1 where there is none."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    tfidf = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit_transform(instructions)
    answer = np.unique(outputs, return_inverse=True)[1]  # records with the same answer share a number
    near = np.full(len(instructions), -1, dtype=np.int64)
    for start in range(0, len(instructions), 1024):
        rows = np.arange(start, min(start + 1024, len(instructions)))
        sim = (tfidf[rows] @ tfidf.T).toarray()
        sim[answer[rows][:, None] == answer[None, :]] = -1.0  # itself, and any record with the same answer
        best = sim.argmax(axis=1)
        near[rows] = np.where(sim[np.arange(len(rows)), best] >= 0, best, -1)
    return near


def corrupt(
    records,
    kinds=KINDS,
    *,
    seed: int = 0,
    phrases: str = "eval",
    foreign: list[str] | None = None,
) -> list[Corrupted]:
    """Corrupted copies of `records` (objects or tuples with instruction, input, output): for each kind, one copy
    of every record the kind applies to. `phrases` picks the boilerplate and restating set ("train" or "eval");
    `foreign` lends answers in another language (kind `foreign` is left out without it). Deterministic in `seed`."""
    rows = [(r.instruction, r.input, r.output) if hasattr(r, "output") else tuple(r) for r in records]
    rng = np.random.default_rng(seed)
    outputs = [r[2] for r in rows]
    out: list[Corrupted] = []
    near = nearest_other([f"{a} {b}" for a, b, _ in rows], outputs) if "other_near" in kinds else None
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if kind == "foreign" and not foreign:
            continue
        for i, (instruction, input, output) in enumerate(rows):
            new = _one(kind, i, instruction, input, output, rows, near, rng, phrases, foreign)
            if new is not None and new.strip() != output.strip():
                out.append(Corrupted(i, kind, new))
    return out


def _one(kind, i, instruction, input, output, rows, near, rng, phrases, foreign) -> str | None:
    words = _words(output)
    long = len(words) >= MIN_WORDS
    if kind == "other_random":
        others = [j for j in rng.permutation(len(rows))[:8] if rows[j][2] != output and j != i]
        return rows[others[0]][2] if others else None
    if kind == "other_near":
        return rows[near[i]][2] if near[i] >= 0 else None
    if kind == "echo":
        return instruction
    if kind == "restate":
        pattern = RESTATE[phrases][rng.integers(len(RESTATE[phrases]))]
        task = (
            instruction[:1].lower() + instruction[1:]
            if pattern.startswith(("You want", "I will", "In this"))
            else instruction
        )
        return pattern.format(t=task)
    if kind == "echo_input":  # the record's input given back, alone or after the instruction (by the record's parity)
        if not input.strip():
            return None
        return input if i % 2 else f"{instruction}\n{input}"
    if kind == "cut_quarter":
        return _cut_words(output, 0.25) if long else None
    if kind == "cut_half":
        return _cut_words(output, rng.uniform(0.35, 0.65)) if long else None
    if kind == "cut_sentence":
        sentences = _sentences(output)
        if len(sentences) < 2 or not long:
            return None
        keep = int(rng.integers(1, len(sentences)))
        return "".join(sentences[:keep]).rstrip()
    if kind == "loop_whole":
        return "\n\n".join([output] * 3)
    if kind == "loop_paragraph":
        sentences = _sentences(output)
        if len(sentences) < 2 or not long:
            return None
        at = int(rng.integers(len(sentences)))
        part = sentences[at] if sentences[at][-1:].isspace() else sentences[at] + " "
        return "".join(sentences[:at] + [part] * 4 + sentences[at + 1 :]).rstrip()
    if kind == "loop_ngram":
        if not long:
            return None
        keep = int(len(words) * rng.uniform(0.3, 0.7))
        n = int(rng.integers(2, 6))
        gram = words[max(0, keep - n) : keep]
        repeats = max(4, (len(words) - keep) // len(gram) + 2)
        return " ".join(words[:keep] + gram * repeats)
    if kind == "foreign":
        return foreign[int(rng.integers(len(foreign)))]
    if kind == "empty":
        return ""
    if kind == "boilerplate":
        return BOILERPLATE[phrases][rng.integers(len(BOILERPLATE[phrases]))]
    if kind == "refuse_part":
        return _refuse_tail(output, rng, phrases) if long else None
    raise AssertionError(kind)
