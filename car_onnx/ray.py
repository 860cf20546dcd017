"""car-onnx on a Ray cluster (the [ray] extra): the same selection, scored by actors across the cluster.

- `RayEngine(address)` runs `car-onnx select --ray ADDRESS` (`car_onnx.jobs.select(..., engine=RayEngine(...))`):
  each input file is scanned by its own task, every
  inference chunk (the unit a --work-dir keeps, keyed by file and place, not by Ray's blocks) is run by an actor
  pool through `Dataset.map_batches`, and the driver keeps the finished chunks, clusters and writes as the local
  job does: the output is the same, byte for byte.
- `score_embed(ds)` and `select(ds)` work on a `ray.data.Dataset` for Python users.

Every node needs car-onnx installed and the bundle and the input at the same paths as on the driver (a shared
filesystem, or the air-gapped kit unpacked at one path everywhere); each actor checks the bundle against the
driver's manifest and the sha256 of its model files before its first batch. Ray is imported only here."""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from collections import deque
from contextlib import contextmanager
from itertools import islice
from pathlib import Path

import numpy as np

from .api import Model, ModelOptions
from .core.clustering import PCA_VARIANCE, SAMPLE_SIZE, SEED, assign
from .core.columns import duplicates
from .core.rows import BLOCK_ROWS, Rows, rows_in
from .core.selection import N1, N2, SelectOptions, check_clustering
from .errors import CarError, UsageError
from .jobs import scanning
from .jobs.workdir import ChunkRows, WorkDir
from .runtime.coverage import Coverage, coverage_warning
from .runtime.manifest import sha256_file

ACTOR_THREADS = 1  # --threads under --ray: the CPUs of each actor (and the batches it runs side by side)
READERS = 2  # sample mode: tasks reading work-dir chunks on the driver's node at a time (they take no CPU slot)
MAX_BLOCKS = 2048  # inference chunks share at most this many Ray blocks: each block is a Ray task to schedule and
# keep track of on the driver (6,250 chunks of 32 records: 129 s one block each, 92 s in 2,048 blocks)


def _ray():
    try:
        import ray
    except ImportError:
        raise UsageError("{ray} needs Ray: pip install 'car-onnx[ray]'", "ray") from None
    return ray


def connect(address: str) -> None:
    """Join the Ray cluster at `address`: "local" (start one for this job on this machine), "auto" (RAY_ADDRESS or
    the running one) or HOST:PORT. Already connected: nothing to do."""
    ray = _ray()
    if ray.is_initialized():
        return
    if not address:
        raise UsageError("{ray} must be local, auto or HOST:PORT", "ray")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    try:
        ray.init(
            address=address,
            logging_level=logging.ERROR,
            include_dashboard=False,
            configure_logging=True,
            log_to_driver=False,
        )
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise UsageError(
            f"{{ray}} {address}: cannot connect to a Ray cluster ({str(err).splitlines()[0]})", "ray"
        ) from None
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # Ray Data's notices would bury the job's own lines; its failures reach us as exceptions, and the pool is
    # sized from the cluster's CPUs (no "not enough CPUs" hang to warn of).
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def _cause(err: BaseException) -> BaseException:
    """The CarError a Ray failure carries (a task's or an actor's, however deeply wrapped), else the failure."""
    from ray.exceptions import RayError

    seen = err
    while seen is not None:
        cause = getattr(seen, "cause", None)
        if isinstance(cause, CarError) and not isinstance(cause, RayError):
            return cause
        if isinstance(seen, CarError) and not isinstance(seen, RayError):
            return seen
        seen = cause if isinstance(cause, BaseException) else seen.__cause__
    return err


@contextmanager
def _task_errors():
    """A Ray task's or actor's failure raised as the CarError it carries (a located input error, a bundle
    mismatch), else as it is."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - re-raised: our own error if it carries one, else itself
        cause = _cause(err)
        if cause is err:
            raise
        raise cause from None


def _actors(threads: int, units: int | None = None) -> int:
    """Actors of `threads` CPUs that the cluster holds (at least one; at most one per unit of work, if given)."""
    cpus = int(_ray().cluster_resources().get("CPU", 1))
    return max(1, min(units or cpus, cpus // threads))


class _Chunks:
    """An actor: runs inference chunks of the input files (the job's plan) with one Model created once."""

    def __init__(self, model: Model, job: scanning.Job, added: tuple, roles: tuple, stamps: tuple, manifest: str):
        self.model, self.job, self.added, self.roles, self.stamps = model, job, added, roles, stamps
        model.check_driver_bundle(manifest, roles)
        self.reader = None  # (file, next record, its open reader) after the last chunk

    def _records(self, shard: int, start: int):
        """The accepted records of file `shard` from its `start`-th on. The reader of this actor's last chunk goes
        on when that chunk ended at or before `start` in the same file (chunks reach an actor in order, so each
        actor reads a file about once), else the file is read again from its beginning."""
        reader, self.reader = self.reader, None
        if reader is None or reader[0] != shard or reader[1] > start:
            reader = (shard, 0, scanning.shard_records(self.job, self.model, self.stamps[shard], self.added, shard))
        _, at, records = reader
        scanning.check_unchanged(self.job, shard, self.stamps[shard])
        deque(islice(records, start - at), maxlen=0)
        return records

    def __call__(self, batch: dict) -> dict:
        c, shard, start, size = (int(batch[key][0]) for key in ("chunk", "shard", "start", "size"))
        records = self._records(shard, start)
        before = {m.spec.name: (m.coverage.unknown, m.coverage.tokens) for m in self.model.loaded()}
        out = self.model.run(list(islice(records, size)), self.roles)
        self.reader = (shard, start + size, records)
        for m in self.model.loaded():  # the chunk's unknown-token counts, in its first row (runtime/coverage.py)
            unknown, tokens = before.get(m.spec.name, (0, 0))
            for key, value in (
                (f"unknown:{m.spec.name}", m.coverage.unknown - unknown),
                (f"tokens:{m.spec.name}", m.coverage.tokens - tokens),
            ):
                out[key] = np.zeros(size, dtype=np.int64)
                out[key][0] = value
        return {"chunk": np.full(size, c, dtype=np.int64), **out}


@dataclasses.dataclass
class RayEngine:
    """A file job's scan and inference on the connected Ray cluster: pipeline.Engine's Ray implementation."""

    address: str = "local"
    threads: int = ACTOR_THREADS  # CPUs per actor

    def __post_init__(self):
        _ray()  # without the extra: an error before any work

    def scan(self, job, model, added, rejects, stages, index) -> scanning.Scan:
        """Every input file scanned by its own task; the first bad file (in input order) fails the job, as the
        local scan would; each file's places and keys stream to the driver's `index` (on disk) a block of records
        at a time. Connects to the cluster first (after every option was checked)."""
        connect(self.address)
        ray = _ray()
        task = ray.remote(num_cpus=1, num_returns="streaming")(_scan_shard)  # files read side by side; what a
        # file's task yields waits in the object store (spilled to disk when full) until the driver takes it
        skip = job.on_error == "skip"
        with stages.stage("read") as advance:
            streams = [task.remote(job, shard, model, added, skip, index.dedup) for shard in range(len(job.shards))]
            parts = []
            for shard, stream in enumerate(streams):
                for ref in stream:
                    with _task_errors():
                        got, bad = ray.get(ref)
                    for err, raw in bad:
                        rejects.write(scanning.reject_row(job, shard, err, raw))
                    if isinstance(got, scanning.ShardScan):
                        parts.append(got)
                    else:
                        index.add(*got)
                        advance(len(got[0]))
        return scanning.finish_scan(job, parts, stages, rejects, index)

    def infer(self, job, model, roles, found, added, work, stages) -> None:
        """The chunks not finished yet, run by an actor pool; each is saved in the work dir as it arrives (a
        driver restarted with the same --work-dir runs only the missing ones)."""
        ray = _ray()
        pending = [(c, s, a, m) for c, (s, a, m) in enumerate(found.plan) if not work.has(c, m)]
        if len(pending) < len(found.plan):
            stages.note(f"{len(found.plan) - len(pending)} of {len(found.plan)} chunk(s) already finished")
        if not pending:
            return
        actors, blocks = _actors(self.threads, len(pending)), min(len(pending), MAX_BLOCKS)
        stages.note(
            f"Ray: {len(pending)} chunk(s) on {actors} actor(s) of {self.threads} CPU(s)"
            + (f", {blocks} Ray blocks of consecutive chunks" if blocks < len(pending) else "")
        )
        units = ray.data.from_items(
            [{"chunk": c, "shard": s, "start": a, "size": m} for c, s, a, m in pending], override_num_blocks=blocks
        )
        results = units.map_batches(  # Ray Data restarts a dead actor and retries its tasks
            _Chunks,
            batch_size=1,
            batch_format="numpy",
            num_cpus=self.threads,
            compute=ray.data.ActorPoolStrategy(size=actors),
            fn_constructor_kwargs={
                "model": model.with_threads(self.threads),
                "job": job,
                "added": added,
                "roles": roles,
                "stamps": found.stamp,
                "manifest": sha256_file(model.bundle / "manifest.json"),
            },
        )
        sizes = {c: m for c, _, _, m in pending}
        parts: dict[int, list] = {}
        coverage: dict[str, Coverage] = {}
        with stages.stage("+".join(roles), total=sum(sizes.values())) as advance, _task_errors():
            for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
                for key in batch:
                    if key.startswith("unknown:"):
                        name = key.split(":", 1)[1]
                        counts = coverage.setdefault(name, Coverage())
                        counts.unknown += int(batch[key].sum())
                        counts.tokens += int(batch[f"tokens:{name}"].sum())
                for c in np.unique(batch["chunk"]):
                    rows = batch["chunk"] == c
                    parts.setdefault(int(c), []).append({r: batch[r][rows] for r in roles})
                    advance(int(rows.sum()))
                    got = parts[int(c)]
                    if sum(len(p[roles[0]]) for p in got) == sizes[int(c)]:
                        work.save(int(c), {r: np.concatenate([p[r] for p in got]) for r in roles})
                        del parts[int(c)]
        if parts:
            raise UsageError(f"Ray returned chunk(s) {sorted(parts)} incomplete")
        for name, counts in coverage.items():  # as Model.warn_unreadable says it of a local job
            message = coverage_warning(name, counts)
            if message:
                warnings.warn(message, stacklevel=2)

    def rows(self, embeddings, stages):
        """The embeddings car_select clusters: in sample mode (a work dir's ChunkRows) with every row assigned on
        the cluster."""
        return (
            _ChunksOnCluster(embeddings, self.threads, stages.note) if isinstance(embeddings, ChunkRows) else embeddings
        )


def _scan_shard(job, shard, model, added, skip, dedup):
    """A Ray streaming task: the scan of one input file as scanning.scan_shard yields it (blocks of places and
    keys, then the ShardScan), each item with the rejected records (err, row) found since the last one."""
    bad = []
    for got in scanning.scan_shard(
        job, shard, model, added, (lambda err, raw: bad.append((err, raw))) if skip else None, dedup
    ):
        yield got, bad[:]
        bad.clear()


# --- sample mode: every row assigned to a cluster by an actor pool ------------------------------------------


class _Assign:
    """An actor: the cluster of each row of `column` under the PCA and KMeans fitted on the driver's sample. Rows
    of one work-dir chunk (a "chunk" column) are assigned together, as the local job assigns them."""

    def __init__(self, pca, km, column: str):
        self.pca, self.km, self.column = pca, km, column

    def __call__(self, batch: dict) -> dict:
        x, out = batch[self.column], {k: v for k, v in batch.items() if k != self.column}
        if "chunk" not in batch:
            return dict(out, label=assign(x, self.pca, self.km))
        out["label"] = np.empty(len(x), dtype=np.int64)
        for c in np.unique(batch["chunk"]):
            rows = batch["chunk"] == c
            out["label"][rows] = assign(x[rows], self.pca, self.km)
        return out


def _assigned(ds, column: str, pca, km, threads: int, batch_size: int | None = None):
    """`ds` with a `label` column (and without `column`), computed by a pool of actors of `threads` CPUs."""
    ray = _ray()
    return ds.map_batches(
        _Assign,
        batch_format="numpy",
        batch_size=batch_size,
        num_cpus=threads,
        compute=ray.data.ActorPoolStrategy(size=_actors(threads)),
        fn_constructor_kwargs={"pca": pca, "km": km, "column": column},
    )


def _read_chunks(batch: dict, root: str, roles: tuple) -> dict:
    """A task on the driver's node: some work-dir chunks' embeddings, with their chunk and row numbers (each chunk
    checked as the local job checks it)."""
    work, parts = WorkDir(Path(root), roles, note=None), {"chunk": [], "row": [], "embed": []}
    for c, first, size in zip(batch["chunk"], batch["first"], batch["size"]):
        parts["chunk"].append(np.full(size, c))
        parts["row"].append(np.arange(first, first + size))
        parts["embed"].append(work.load(int(c), int(size))["embed"])
    return {key: np.concatenate(value) for key, value in parts.items()}


class _ChunksOnCluster(Rows):
    """A work dir's embeddings (workdir.ChunkRows) whose assignment to clusters runs on the Ray cluster: the chunk
    files read, about BLOCK_ROWS rows at a time, by tasks pinned to the driver's node (the work dir is the
    driver's: no shared filesystem needed), their rows assigned by an actor pool through map_batches; only the
    labels come back. The selection's per-block work runs in Ray tasks too (`map`)."""

    def __init__(self, rows: ChunkRows, threads: int, note):
        self.rows, self.threads, self.note, self.shape, self.mapped = rows, threads, note, rows.shape, False

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, rows) -> np.ndarray:
        return self.rows[rows]

    def assign(self, pca, km, out) -> None:
        ray = _ray()
        starts = self.rows.starts
        items = [
            {"chunk": c, "first": int(starts[c]), "size": int(starts[c + 1] - starts[c])}
            for c in range(len(starts) - 1)
        ]
        here = {"ray.io/node-id": ray.get_runtime_context().get_node_id()}  # the driver's node (Ray's own label)
        actors = _actors(self.threads)
        self.note(f"Ray: assigning {len(self):,} rows to clusters on {actors} actor(s)")
        blocks = min(len(items), max(actors, -(-len(self) // BLOCK_ROWS)))  # <= BLOCK_ROWS rows each, if they can
        chunks = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            _read_chunks,
            batch_size=None,
            batch_format="numpy",
            num_cpus=0,
            concurrency=min(READERS, blocks),
            label_selector=here,
            fn_kwargs={"root": str(self.rows.work.root), "roles": self.rows.work.roles},
        )
        seen = 0
        with _task_errors():
            for batch in _assigned(chunks, "embed", pca, km, self.threads).iter_batches(
                batch_size=None, batch_format="numpy"
            ):
                out[batch["row"]] = batch["label"]
                seen += len(batch["row"])
        if seen != len(self):
            raise UsageError(f"Ray assigned {seen} of {len(self)} rows")

    def map(self, fn, items):
        """The selection's per-block work, in Ray tasks (see _tasks)."""
        if not self.mapped:
            self.note("Ray: choosing the n1 block and each cluster's picks a block of rows at a time, in tasks")
            self.mapped = True
        return _tasks(fn, items)


def _tasks(fn, items):
    """`fn` over `items` by Ray tasks (on any node), the results in order, a few at a time in flight: in sample
    mode, the selection's per-block work (selection.select_streamed), so that the n1 block is a distributed top-k
    and the n2 picks a group-by on cluster, merged on the driver."""
    ray = _ray()
    task, running, most = ray.remote(num_cpus=1)(_apply), deque(), 2 * _actors(1)
    with _task_errors():
        for item in items:
            running.append(task.remote(fn, item))
            if len(running) > most:
                yield ray.get(running.popleft())
        while running:
            yield ray.get(running.popleft())


def _apply(fn, item):
    """A Ray task: fn(item)."""
    return fn(item)


# --- Python API over ray.data.Dataset -----------------------------------------------------------------------


class _Rows:
    """An actor adding `score` and `embedding` columns (and with dedup, a 16-byte `text_key`) to batches of rows."""

    def __init__(self, model: Model, keys: bool):
        self.model, self.keys = model, keys
        model.precisions(("score", "embed"))  # checks the bundle's files before the first batch

    def __call__(self, batch: dict) -> dict:
        columns = {name: list(values) for name, values in batch.items()}
        from .io import containers

        found = list(containers.records(columns, self.model.fields))
        out = self.model.run(found, ("score", "embed"))
        batch = dict(batch, score=out["score"], embedding=out["embed"])
        if self.keys:
            keys = b"".join(self.model.key(r) for r in found)
            batch["text_key"] = np.frombuffer(keys, dtype=np.uint8).reshape(-1, 16)
        return batch


def score_embed(
    ds,
    *,
    bundle=None,
    device: str = "cpu",
    precision: str | None = None,
    threads: int = ACTOR_THREADS,
    fields=None,
    max_tokens: int | None = None,
    turns: str = "all",
    actors: int | None = None,
    _keys: bool = False,
):
    """`ds` with a `score` (float32) and an `embedding` (float32 [dim]) column, computed by a pool of `actors`
    actors of `threads` CPUs each [default: as many as the cluster's CPUs hold]."""
    ray = _ray()
    options = ModelOptions.parse(
        device=device, precision=precision, threads=threads, fields=fields, max_tokens=max_tokens, turns=turns
    )
    model = Model(bundle, options=options)
    return ds.map_batches(
        _Rows,
        batch_format="numpy",
        batch_size=256,
        num_cpus=threads,
        compute=ray.data.ActorPoolStrategy(size=actors or _actors(threads)),
        fn_constructor_kwargs={"model": model, "keys": _keys},
    )


def select(
    ds,
    *,
    bundle=None,
    n1=N1,
    n2=N2,
    k: int | None = None,
    pca_variance: float = PCA_VARIANCE,
    seed: int = SEED,
    dedup="exact",
    cluster: str = "auto",
    sample_size: int = SAMPLE_SIZE,
    **model_options,
):
    """The CaR selection of a `ray.data.Dataset`, as `Model.select` makes it of a list: a `Selection` whose row
    numbers are positions in `ds`'s order. Scores and embeddings are computed on the cluster; the driver gathers
    the scores, the 16-byte text keys and (cluster="exact") the embeddings, ~1.6 KB a record, or (sample) only
    the sample's. `model_options` go to `score_embed`."""
    options = SelectOptions.parse(
        n1=n1, n2=n2, k=k, pca_variance=pca_variance, seed=seed, dedup=dedup, cluster=cluster, sample_size=sample_size
    )
    clusterer = options.clusterer()
    clusterer.check()
    dedup = options.dedup
    scored = score_embed(ds, bundle=bundle, _keys=dedup.exact, **model_options)
    scored.context.execution_options.preserve_order = True  # this dataset's copy: rows keep `ds`'s order
    scored = scored.materialize()
    n = scored.count()
    keep = ["score"] + (["text_key"] if dedup.exact else [])
    sampled = clusterer.sampled(n)
    columns = keep if sampled else keep + ["embedding"]
    parts = {c: [] for c in columns}
    for batch in scored.select_columns(columns).iter_batches(batch_format="numpy", batch_size=None):
        for c in columns:
            parts[c].append(batch[c])
    got = {c: np.concatenate(v) for c, v in parts.items()}
    exact = duplicates(got["text_key"].tobytes()) if dedup.exact else None
    ranked = n if exact is None else int((exact < 0).sum())
    check_clustering(clusterer, ranked, dedup.near)
    threads = model_options.get("threads", ACTOR_THREADS)
    embeddings = _SampledRows(scored, n, threads) if sampled else got["embedding"]
    return options.select(got["score"], embeddings, duplicate_of=exact)


class _SampledRows(Rows):
    """A materialised dataset's embeddings as clustering.Clusterer reads them in sample mode: the sample's rows
    gathered by position, and every row assigned by an actor pool (only the labels come to the driver); the
    selection's per-block work in Ray tasks."""

    def __init__(self, ds, n: int, threads: int):
        self.ds, self.shape, self.threads = ds.select_columns(["embedding"]), (n, None), threads

    def __len__(self) -> int:
        return self.shape[0]

    def blocks(self):
        first = 0
        for batch in self.ds.iter_batches(batch_format="numpy", batch_size=65_536):
            yield first, batch["embedding"]
            first += len(batch["embedding"])

    def __getitem__(self, rows) -> np.ndarray:
        rows, out = np.asarray(rows), []
        for first, block in self.blocks():
            out.append(block[rows_in(rows, first, first + len(block)) - first])
        return np.concatenate(out)

    def map(self, fn, items):
        """The selection's per-block work, in Ray tasks (see _tasks)."""
        return _tasks(fn, items)

    def assign(self, pca, km, out) -> None:
        """Every row's cluster into `out`, assigned by an actor pool (rows keep the dataset's order)."""
        labelled = _assigned(self.ds, "embedding", pca, km, self.threads, BLOCK_ROWS)
        first = 0
        for batch in labelled.iter_batches(batch_format="numpy", batch_size=None):
            out[first : first + len(batch["label"])] = batch["label"]
            first += len(batch["label"])


__all__ = ["RayEngine", "connect", "score_embed", "select"]
