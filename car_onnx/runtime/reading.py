"""How a bundle reads a whole record: every exchange of a conversation, and an answer longer than the model's
token limit in windows that each carry the instruction. The manifest's `reading` says how many windows an answer
gets (`max_windows`; a bundle without it reads the first `max_length` tokens, as before); the runtime's `turns`
option says whether every exchange is read ("all") or the first alone ("first", the paper's reading).

A record is cut into units, each one text the model runs once:
- an exchange whose text fits `max_length` tokens is one unit, its text exactly as before: a record of one such
  exchange gets exactly the score and embedding it got without windows;
- a longer one: the prompt (instruction and input; cut to half the window, input first, where longer) then, per
  window, the next stretch of the answer's tokens that fits, at most `max_windows` windows (the rest unread).
An exchange's score and embedding are the means of its windows', weighted by the answer tokens each read; the
record's are the plain means of its exchanges' (the embedding L2-normalised). A window cannot see a loop longer than
itself (an answer repeated whole): each window of a longer answer also carries the share of the whole answer's runs
of RUN tokens seen earlier in it (`Unit.loops`, `answer_loops`), which a graph that reads it takes where it is above
the window's own share of repeated trigrams; a text that fits carries 0 (its graph's own count, bit for bit as
before). Measured (docs/whole-records.md): a mean weighted by tokens across exchanges lets a long good exchange
outweigh a short bad one (0.866 of held-out pairs told apart in two-exchange conversations, against 0.909) and a
long exchange pull the embedding to its topic (0.482 of a conversation's nearest from its topic cluster, against
0.504); a plain mean across windows loses agreement on long single answers (0.906 against 0.929)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .coverage import unknown_id

TURNS = ("all", "first")
READ_TOKENS = 16384  # the export's rule for both bundles: an answer is read up to this many tokens, in windows
# A window's answer loops count repeated runs of RUN tokens: a copy, where trigrams also count the phrases a long
# answer repeats (the expert training pairs' answers longer than 200 tokens: a median share of 0.075 repeated
# trigrams and 0.184 at the 90th percentile, against 0 and 0.028 for runs of 8; the answer repeated three times:
# 0.66 either way)
RUN = 8
# An answer that says one part (2 to IN_PLACE_PERIOD tokens, one of them with a letter or digit) IN_PLACE times or
# more in a row (`said_in_place`, `answer_repeats`) loops in place: a line or sentence said again and again, as a
# generator that is stuck does. Chosen on the expert training pairs' 4,064 answers (3 of them say a part so: dates,
# a vowel list; parts of one token or without a word, such as a table's dashes, would add 12) and the copies of the
# 15% held apart with a sentence said four times in place (0.996 of them say a part so; parts of 3 tokens or more:
# 0.948). Measured on the shared corpora: docs/scorers.md.
IN_PLACE, IN_PLACE_PERIOD = 3, 64
READING = 3  # the version of these rules, in a work dir's identity: 1 read the first exchange's first window only,
# 2 did not give a window its answer's loops


@dataclass(frozen=True)
class Reading:
    """The manifest's reading rule of one model: how many windows of `max_length` tokens an answer may take."""

    max_windows: int = 1

    def to_json(self) -> dict:
        return {"max_windows": self.max_windows}


@dataclass(frozen=True)
class Unit:
    """One text a model runs: where its response starts (characters), the answer tokens it reads, its share of
    its exchange's answer tokens (its weight in the record's score and embedding) and, for a window of a longer
    answer, the share of that whole answer's runs of RUN tokens seen earlier in it (`loops`; 0 for a text that
    fits), `window` (True for a window after an answer's first: it starts mid-answer), for a Reader that counts
    them, whether its whole answer says a part IN_PLACE times in a row (`repeats`: 1.0 or 0.0, `said_in_place`) and
    `open` (True for a window that ends before its answer does: the answer goes on past it, read or not)."""

    text: str
    start: int
    tokens: int
    share: float = 1.0
    loops: float = 0.0
    window: bool = False
    repeats: float = 0.0
    open: bool = False


class Reader:
    """Cuts records into units for one model (its template, tokenizer and limit) and combines the units' outputs."""

    def __init__(self, template, tokenizer, max_length: int, reading: Reading | None, repeats: bool = False):
        """`repeats`: give every unit its answer's `repeats` (for a graph that reads `answer_repeats`)."""
        self.template, self.max_length = template, max_length
        self.words = word_tokens(tokenizer) if repeats else None
        self.max_windows = reading.max_windows if reading is not None else 1
        self._tokenizer, self._counter = tokenizer, None
        # a text of fewer characters fits: every token but the special ones covers at least one character
        self.quick = max_length - tokenizer.num_special_tokens_to_add(False)
        # the characters of an answer max_windows windows can read at most, twice over (a token covers at most the
        # longest vocabulary entry's characters): what lies past them is never tokenized
        self.cap = 2 * self.max_windows * max_length * max(map(len, tokenizer.get_vocab()))

    def units(self, record, turns: str = "all") -> list[Unit]:
        """The texts of `record` (instruction, input, output and, for a conversation, `turns`: its later
        exchanges), as this model reads them."""
        exchanges = [(record.instruction, record.input, record.output)]
        if turns == "all":
            exchanges += getattr(record, "turns", ())  # a plain (instruction, input, output) object has none
        if len(exchanges) == 1:
            text = self.template.render(*exchanges[0])
            if self.max_windows == 1 or len(text) < self.quick:  # it fits: its text as before
                start = self.template.response_start(*exchanges[0][:2])
                return [Unit(text, start, 1, repeats=self._repeats(exchanges[0][2]))]
        return [u for exchange in exchanges for u in self.exchange(*exchange)]

    def exchange(self, instruction: str, input: str, output: str) -> list[Unit]:
        text = self.template.render(instruction, input, output)
        start = self.template.response_start(instruction, input)
        if self.max_windows == 1:
            return [Unit(text, start, 1, repeats=self._repeats(output))]
        counter = self.counter()
        capped = len(output) > self.cap
        if capped:  # a giant answer: only what max_windows windows can read is tokenized
            output = output[: self.cap]
            text = self.template.render(instruction, input, output)
        total = len(counter.encode(text).ids)
        if total <= self.max_length:
            tokens = max(total - self._tokens(self.template.render(instruction, input, "")), 1)
            return [Unit(text, start, tokens, repeats=self._repeats(output))]
        instruction, input = self._clip_prompt(instruction, input)
        prompt = self._tokens(self.template.render(instruction, input, ""))
        budget = max(self.max_length - prompt - 2, 1)  # 2: a token either side of a cut may tokenize differently
        answer = counter.encode(output, add_special_tokens=False)
        offsets = answer.offsets
        if not offsets:  # a long prompt and no answer: read as before, its first max_length tokens
            return [Unit(text, start, 1, repeats=self._repeats(output))]
        units = []
        for first in range(0, len(offsets), budget)[: self.max_windows]:
            last = min(first + budget, len(offsets)) - 1
            part = output[offsets[first][0] : offsets[last][1]]
            units.append(
                Unit(
                    self.template.render(instruction, input, part),
                    self.template.response_start(instruction, input),
                    last - first + 1,
                    open=capped or last < len(offsets) - 1,
                )
            )
        read = sum(u.tokens for u in units)
        loops = repeated_runs(answer.ids[:read])
        repeats = self._said(answer.ids[:read])
        return [
            Unit(u.text, u.start, u.tokens, u.tokens / read, loops, k > 0, repeats, u.open) for k, u in enumerate(units)
        ]

    def _repeats(self, output: str) -> float:
        """`_said` of the answer `output`, tokenized only where the Reader counts repeats."""
        if self.words is None:
            return 0.0
        return self._said(self.counter().encode(output[: self.cap], add_special_tokens=False).ids)

    def _said(self, ids) -> float:
        """1.0 where the Reader counts repeats and the answer's token `ids` say a part IN_PLACE times in a row."""
        return float(self.words is not None and said_in_place(ids, self.words))

    def counter(self):
        """The model's tokenizer without truncation: to count a text's tokens past max_length."""
        if self._counter is None:
            from tokenizers import Tokenizer

            self._counter = Tokenizer.from_str(self._tokenizer.to_str())
            self._counter.no_truncation()
            self._counter.no_padding()
        return self._counter

    def _tokens(self, text: str) -> int:
        return len(self.counter().encode(text).ids)

    def _clip_prompt(self, instruction: str, input: str) -> tuple[str, str]:
        """The prompt cut to at most half the window (the input first, then the instruction), so that every window
        reads at least as many answer tokens as prompt tokens."""
        limit = self.max_length // 2
        for _ in range(4):  # a cut can shift a token at its edge: cut again, a token further
            excess = self._tokens(self.template.render(instruction, input, "")) - limit
            if excess <= 0:
                break
            if input:
                input = self._cut(input, excess + 1)
            else:
                instruction = self._cut(instruction, excess + 1)
        return instruction, input

    def _cut(self, text: str, tokens: int) -> str:
        """`text` without its last `tokens` tokens."""
        offsets = self.counter().encode(text, add_special_tokens=False).offsets
        keep = len(offsets) - tokens
        return text[: offsets[keep - 1][1]] if keep > 0 else ""


def repeated_runs(ids: list[int], n: int = RUN) -> float:
    """The share of the runs of `n` tokens of `ids` that occur earlier in `ids`; 0 for fewer than `n` tokens."""
    seen: set = set()
    repeats = 0
    for run in zip(*(ids[i:] for i in range(n))):
        repeats += run in seen
        seen.add(run)
    return repeats / max(len(ids) - n + 1, 1)


def word_tokens(tokenizer) -> np.ndarray:
    """Per token id of `tokenizer`, whether the token has a letter or a digit (`said_in_place`'s words); its unknown
    and special tokens are none (a run of unknown characters is no word said again)."""
    vocab = tokenizer.get_vocab()
    words = np.zeros(max(vocab.values()) + 1, dtype=bool)
    for token, i in vocab.items():
        words[i] = any(c.isalnum() for c in token)
    special = [i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special]
    words[[i for i in [unknown_id(tokenizer), *special] if i is not None]] = False
    return words


def said_in_place(ids, words: np.ndarray) -> bool:
    """Whether `ids` say one part of 2 to IN_PLACE_PERIOD tokens, at least one of them a word (`words`: per token
    id), IN_PLACE times or more in a row: for some period p, (IN_PLACE - 1) * p tokens in a row each equal to the
    token p before them."""
    ids = np.asarray(ids, dtype=np.int64)
    have = np.concatenate([[0], np.cumsum(words[ids])])  # words among the first k tokens
    for p in range(2, min(IN_PLACE_PERIOD, len(ids) // IN_PLACE) + 1):
        span = (IN_PLACE - 1) * p
        same = np.concatenate([[0], np.cumsum(ids[p:] == ids[:-p])])  # same[k]: tokens among the first k equal to
        starts = np.flatnonzero(same[span:] - same[:-span] == span)  # the one p after; a part said at each start
        if (have[starts + p] > have[starts]).any():
            return True
    return False


def combine(values: np.ndarray, counts: list[int], weights: np.ndarray, normalise: bool) -> np.ndarray:
    """Per record, the weighted mean of its units' rows (`counts`: units per record, in order); a record of one
    unit keeps its unit's values exactly. `normalise`: L2-normalise the means (embeddings)."""
    if all(c == 1 for c in counts):
        return values
    out = np.empty((len(counts), *values.shape[1:]), dtype=values.dtype)
    at = 0
    for i, c in enumerate(counts):
        if c == 1:
            out[i] = values[at]
        else:
            w = weights[at : at + c].astype(np.float64)
            mean = np.tensordot(w / w.sum(), values[at : at + c].astype(np.float64), axes=1)
            if normalise:
                mean = mean / max(np.linalg.norm(mean), 1e-12)
            out[i] = mean
        at += c
    return out
