"""The Python API: a bundle loaded for scoring, embedding and selecting records in-process."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .core import selection
from .core.clustering import PCA_VARIANCE, SAMPLE_SIZE, SEED
from .core.columns import duplicates
from .core.selection import N1, N2, SelectOptions
from .errors import BundleError, UsageError
from .io import containers
from .io.records import FieldMap, Record
from .runtime.bundle import Bundle, find_bundle
from .runtime.coverage import coverage_warnings
from .runtime.manifest import sha256_file
from .runtime.reading import TURNS
from .runtime.session import resolve
from .runtime.tokenization import default_max_tokens

CHUNK_RECORDS = 4096  # records run together: the unit a file job keeps in its work dir
CHUNK_CHARS = 32 << 20  # and at most this many characters of text per chunk, whatever the records' sizes
RAY_CHUNK_RECORDS = 512  # under Ray a chunk is an actor's unit of work: small, so that the actors finish together


def chunks(records: Iterable[Record], size: int = CHUNK_RECORDS) -> Iterator[list[Record]]:
    """Consecutive records, `size` at a time and at most CHUNK_CHARS characters of text per chunk."""
    chunk, chars = [], 0
    for r in records:
        chunk.append(r)
        chars += text_chars(r)
        if chunk_full(len(chunk), chars, size):
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def text_chars(r: Record) -> int:
    return len(r.instruction) + len(r.input) + len(r.output)


def chunk_full(records: int, chars: int, size: int) -> bool:
    """The chunk rule (of `chunks`, and of a file job's plan): a chunk ends at `size` records, or earlier once its
    records hold CHUNK_CHARS characters of text."""
    return records == size or chars >= CHUNK_CHARS


def text_key(text: str) -> bytes:
    """What makes two records the same for exact dedup: their text, whitespace-normalised (a 16-byte digest)."""
    if len(text) <= 1 << 20:
        return hashlib.blake2b(" ".join(text.split()).encode("utf-8", "surrogatepass"), digest_size=16).digest()
    digest = hashlib.blake2b(digest_size=16)  # a giant text: the same digest, without a list of all its words
    for n, word in enumerate(re.finditer(r"\S+", text)):
        digest.update((" " if n else "").encode() + word.group().encode("utf-8", "surrogatepass"))
    return digest.digest()


@dataclass(frozen=True)
class ModelOptions:
    """How a bundle runs (see `load` for each option), parsed and checked once: what the CLI, `load`, `Model` and
    Ray's actors share."""

    device: str = "auto"
    precision: str | None = None
    threads: int | None = None
    fields: FieldMap = field(default_factory=FieldMap.of)
    max_tokens: int | None = None  # None: the device's default budget
    turns: str = "all"  # a conversation's exchanges read: "all" or "first" (the paper's reading)

    @classmethod
    def parse(
        cls, *, device="auto", precision=None, threads=None, fields=None, max_tokens=None, turns="all"
    ) -> ModelOptions:
        """The options as given (fields as a mapping or "KEY=NAME" strings); an error names the option."""
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            raise UsageError(f"{{max_tokens}} must be an integer >= 1, got {max_tokens!r}", "max_tokens")
        if turns not in TURNS:
            raise UsageError(f"{{turns}} must be one of {', '.join(TURNS)}, got {turns!r}", "turns")
        options = cls(device, precision, threads, FieldMap.of(fields), max_tokens, turns)
        options.config()  # checks the device, the threads and the precision
        return options

    def config(self):
        """The session configuration on this machine (the device "auto" resolves to)."""
        return resolve(self.device, self.threads, self.precision)


@dataclass(frozen=True)
class Selection(selection.Selection):
    """What `Model.select` returns: the CaR selection (`car_onnx.core.selection.Selection`: indices, labels, scores,
    ranks, reasons) with the data it was made from and the run's facts, so that it can take its rows and write its
    report."""

    context: dict | None = field(default=None, repr=False, compare=False)  # Model.select's data and facts

    def take(self, data):
        """The selected rows of `data` (what was selected from), in selection order and in its container: a list,
        a pandas DataFrame, a `datasets.Dataset` or a dict of columns."""
        return containers.take(data, self.indices)

    def report(self, path) -> None:
        """Write the curation report (one offline HTML page) of this selection, as `select --report` does;
        needs the [report] extra. Not for a selection of a one-pass iterable (its texts are gone)."""
        from .io import report

        report.write_selection_report(self, path)


class Model:
    """A bundle ready to score, embed and select records: see `car_onnx.load`.

    A Model pickles as its bundle path and options; each process (and each unpickled copy) creates its own
    onnxruntime sessions on first use, so it can be sent to `multiprocessing` workers, `datasets.map(num_proc=N)`
    and Ray. One Model may be called from several threads at once: its sessions are created under a lock and
    onnxruntime runs them concurrently; results do not depend on what else runs."""

    def __init__(
        self,
        bundle=None,
        *,
        device: str = "auto",
        precision: str | None = None,
        threads: int | None = None,
        fields=None,
        max_tokens: int | None = None,
        turns: str = "all",
        options: ModelOptions | None = None,
    ):
        given = (device, precision, threads, fields, max_tokens, turns)
        if options is not None and given != ("auto", None, None, None, None, "all"):
            raise UsageError("pass the Model's options as keywords or as `options=`, not both", "options")
        self.bundle = find_bundle(bundle)
        options = options or ModelOptions.parse(
            device=device, precision=precision, threads=threads, fields=fields, max_tokens=max_tokens, turns=turns
        )
        self.fields, self.config = options.fields, options.config()
        self.max_tokens = options.max_tokens or default_max_tokens(self.config.device)
        self.options = dataclasses.replace(options, max_tokens=self.max_tokens)  # as it pickles: the budget resolved
        self._bundle = Bundle(self.bundle, self.config)  # reads and checks the manifest; sessions come later

    def __getstate__(self) -> dict:
        return {"bundle": str(self.bundle), "options": self.options}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["bundle"], options=state["options"])

    @property
    def device(self) -> str:
        return self.options.device  # as asked ("auto" too); self.config.device is the one it runs on

    @property
    def precision(self) -> str | None:
        return self.options.precision

    @property
    def threads(self) -> int | None:
        return self.options.threads

    def with_threads(self, threads: int | None) -> Model:
        """This Model's bundle and options, with `threads` (e.g. a Ray actor's CPUs)."""
        return Model(self.bundle, options=dataclasses.replace(self.options, threads=threads))

    def __repr__(self) -> str:
        return (
            f"car_onnx.Model({str(self.bundle)!r}, device={self.config.device!r}, "
            f"precision={self.options.precision!r}, threads={self.options.threads!r})"
        )

    @property
    def manifest(self):
        return self._bundle.manifest

    def loaded(self) -> list:
        """The bundle's models this process has made sessions for (models.OnnxModel), e.g. for their vocabulary
        coverage."""
        return self._bundle.loaded()

    def warn_unreadable(self) -> None:
        """A warning for each model that mapped too much of what it read to its unknown token (runtime/coverage.py)."""
        for message in coverage_warnings(self.loaded()):
            warnings.warn(message, stacklevel=2)

    def text(self, instruction: str, input: str, output: str) -> str:
        """A record's text as the scorer reads it (its template)."""
        return self.manifest.model_for("score").template.render(instruction, input, output)

    def key(self, record: Record) -> bytes:
        """What makes two records the same for exact dedup (text_key): the text of each exchange the Model reads."""
        texts = [self.text(*exchange) for exchange in record.exchanges(self.options.turns)]
        return text_key(texts[0] if len(texts) == 1 else "\x1f".join(texts))

    def units(self, record: Record) -> tuple[int, int]:
        """(exchanges, windows) the scorer reads of a validated record (runtime/reading.py)."""
        model = self._bundle.model("score")
        return len(record.exchanges(self.options.turns)), len(model.reader.units(record, self.options.turns))

    def exchange_scores(self, data) -> list[np.ndarray]:
        """Per record, the score of each exchange read (float32; a conversation's in order, one for a plain
        record): `score` gives their mean. `data` as for `score`."""
        records = list(containers.records(data, self.fields))
        if not records:
            raise containers.no_records()
        exchanges = [r.exchanges(self.options.turns) for r in records]
        alone = [Record(r.index, r.where, r.row, *x) for r, xs in zip(records, exchanges) for x in xs]
        scores = np.concatenate([self.run(chunk, ("score",))["score"] for chunk in chunks(alone)])
        self.warn_unreadable()
        return np.split(scores, np.cumsum([len(x) for x in exchanges])[:-1])

    def check_driver_bundle(self, manifest: str, roles=("score", "embed")) -> None:
        """On a worker of a cluster (a Ray actor, a Spark executor), before its first batch: this bundle's manifest
        must be the driver's (its sha256 `manifest`), else an error naming this host; then the models of `roles`
        are loaded, their files' sha256 checked."""
        found = sha256_file(self.bundle / "manifest.json")
        if found != manifest:
            raise BundleError(
                f"{self.bundle} on {socket.gethostname()}: its manifest.json differs from the driver's bundle "
                f"(sha256 {found[:12]}... against {manifest[:12]}...); every node needs the same bundle at the same "
                "path"
            )
        self.precisions(roles)

    def precisions(self, roles=("score", "embed")) -> dict[str, str]:
        """The precision that runs each role here (loads the models)."""
        return {role: self._bundle.model(role).precision for role in roles}

    def run(
        self, records: Iterable[Record], roles: tuple[str, ...], progress: Callable[[int], None] | None = None
    ) -> dict[str, np.ndarray]:
        """Scores ([n]) and/or embeddings ([n, dim]) of validated records, run chunk by chunk as file jobs run them."""
        return self._bundle.run(list(records), roles, self.max_tokens, progress, self.options.turns)

    def _outputs(self, data, roles: tuple[str, ...], keys: list | None = None) -> dict[str, np.ndarray]:
        """Run `roles` over the records of `data`; with `keys`, append each record's text key to it."""
        found = containers.records(data, self.fields)
        if keys is not None:
            found = (keys.append(self.key(r)) or r for r in found)
        if containers.kind(data) != "iterable":
            found = list(found)  # every row is checked before any model runs
        parts = [self.run(chunk, roles) for chunk in chunks(found)]
        if not parts:
            raise containers.no_records()
        self.warn_unreadable()
        return {role: np.concatenate([p[role] for p in parts]) for role in roles}

    def score(self, data) -> np.ndarray:
        """Quality score of every record, float32 [n], in input order. `data`: a list or iterable of dicts
        (instruction/input/output, or `messages` / `conversations`), a pandas DataFrame, a `datasets.Dataset` or a
        dict of columns. A one-pass iterable is read once, a chunk at a time."""
        return self._outputs(data, ("score",))["score"]

    def embed(self, data) -> np.ndarray:
        """Sentence embedding of every record, float32 [n, dim], in input order (`data` as for `score`)."""
        return self._outputs(data, ("embed",))["embed"]

    def score_embed(self, data) -> tuple[np.ndarray, np.ndarray]:
        """Scores and embeddings together, in one forward pass where one graph serves both."""
        out = self._outputs(data, ("score", "embed"))
        return out["score"], out["embed"]

    def select(
        self,
        data,
        *,
        n1=N1,
        n2=N2,
        k: int | None = None,
        pca_variance: float = PCA_VARIANCE,
        seed: int = SEED,
        dedup="exact",
        cluster: str = "auto",
        sample_size: int = SAMPLE_SIZE,
    ) -> Selection:
        """The CaR selection of `data`, as `car-onnx select` makes it: the top `n1` by score (a count or "2%")
        plus the top `n2` of each of `k` clusters [default int(sqrt(n/2))], after dropping duplicates (`dedup`:
        "none", "exact" or "near:T"; `cluster`: "exact", "sample" or "auto", see `car_select`). `Selection.take(data)`
        returns the selected rows in `data`'s container."""
        options = SelectOptions.parse(
            n1=n1,
            n2=n2,
            k=k,
            pca_variance=pca_variance,
            seed=seed,
            dedup=dedup,
            cluster=cluster,
            sample_size=sample_size,
        )
        options.clusterer().check()
        keys: list = []
        start = time.perf_counter()
        out = self._outputs(data, ("score", "embed"), keys if options.dedup.exact else None)
        exact = duplicates(keys) if options.dedup.exact else None
        inferred = time.perf_counter()
        sel = options.select(out["score"], out["embed"], duplicate_of=exact)
        # for Selection.report(): the data (not copied; None for a one-pass iterable) and the run's facts
        reread = data if containers.kind(data) != "iterable" else None
        seconds = {"score+embed": inferred - start, "cluster+select": time.perf_counter() - inferred}
        return Selection(
            **{f.name: getattr(sel, f.name) for f in dataclasses.fields(sel)},
            context={
                "model": self,
                "data": reread,
                "n1": str(options.n1),
                "n2": str(options.n2),
                "dedup": str(options.dedup),
                "exact": 0 if exact is None else int((exact >= 0).sum()),
                "seconds": seconds,
            },
        )


def load(
    bundle: str | Path | None = None,
    *,
    device: str = "auto",
    precision: str | None = None,
    threads: int | None = None,
    fields=None,
    max_tokens: int | None = None,
    turns: str = "all",
) -> Model:
    """A Model of `bundle` (a directory; default: the default bundle, as the CLI finds it).

    device: "cpu", "cuda" or "auto" (CUDA when onnxruntime offers it). precision: "fp32", "int8" or "fp16"
    [default: int8 on CPU, fp16 on CUDA, else what the bundle has]. threads: batches run side by side on CPU
    [default: the usable cores]. fields: where records keep their texts, e.g. {"instruction": "question",
    "output": "answer"} (or "KEY=NAME" strings, as --field). max_tokens: token budget of one batch (rows x longest
    row) [default: 2048 on CPU, 32768 on CUDA]. turns: "all" (every exchange of a conversation is read) or "first"
    (its first exchange alone, the paper's reading); a long answer is read as the bundle's reading rule says
    (docs/whole-records.md)."""
    options = ModelOptions.parse(
        device=device, precision=precision, threads=threads, fields=fields, max_tokens=max_tokens, turns=turns
    )
    return Model(bundle, options=options)
