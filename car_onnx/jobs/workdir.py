"""A job's work directory: each finished inference chunk is a file written atomically, reused by a later run
whose identity (bundle, input content, options) is the same, discarded with a message when it is not."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.columns import Column
from ..core.files import create_npy, naming, remove_stale_temps, replacing
from ..core.rows import Rows, rows_in
from ..errors import UsageError
from .lock import NAME as LOCK

FORMAT = 1
NAMES = {
    "bundle_manifest_sha256": "the bundle",
    "input_sha256": "the input",
    "models": "the model precisions",
    "device": "the device",
    "reading": "how records are read (car-onnx's version)",
}


def _changes(old: dict | None, new: dict) -> str:
    """What differs between two identities, in words."""
    if not isinstance(old, dict) or old.get("format") != FORMAT:
        return "its job.json is unreadable or from another version"
    parts = []
    for key, value in new.items():
        if old.get(key) != value:
            before = old.get(key)
            if key.endswith("sha256"):
                before, value = f"sha256 {str(before)[:12]}...", f"{value[:12]}..."
            parts.append(f"{NAMES.get(key, 'option ' + key)} changed ({before} -> {value})")
    return "; ".join(parts) or "its job.json differs"


class WorkDir:
    """chunks/NNNNNN.npz (one array per role) and job.json (the identity they belong to)."""

    def __init__(self, root: Path, roles: tuple[str, ...], note: Callable[[str], None]):
        self.root, self.roles, self.note = Path(root), roles, note
        self.chunks = self.root / "chunks"
        self.reused = 0

    @staticmethod
    def check(root: Path) -> None:
        """Refuse, before any work, a path that is not ours to use as a work directory."""
        root, job_file = Path(root), Path(root) / "job.json"
        if root.exists() and not root.is_dir():
            raise UsageError(f"{root}: {{work_dir}} is not a directory", "work_dir")
        if root.is_dir() and any(p.name != LOCK for p in root.iterdir()) and not job_file.is_file():
            raise UsageError(
                f"{root}: {{work_dir}} is not empty and holds no job.json (not a car-onnx work "
                "directory); choose a new or empty directory",
                "work_dir",
            )

    @classmethod
    def open(cls, root: Path, ident: dict, note: Callable[[str], None]) -> WorkDir:
        """Use `root` for the job `ident`: keep its chunks if they belong to it, else discard them and say why."""
        root = Path(root)
        job_file = root / "job.json"
        cls.check(root)
        root.mkdir(parents=True, exist_ok=True)
        work = cls(root, tuple(ident["roles"]), note)
        want = {"format": FORMAT, **ident}
        if job_file.is_file():
            try:
                old = json.loads(job_file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError):
                old = None
            if old != want:
                finished = len(list(work.chunks.glob("*.npz")))
                note(
                    f"work dir {root}: {_changes(old, want)} since the last run; "
                    f"its {finished} finished chunk(s) are discarded"
                )
                shutil.rmtree(work.chunks, ignore_errors=True)
        remove_stale_temps(job_file)
        work._write(job_file, json.dumps(want, indent=2).encode())
        work.chunks.mkdir(exist_ok=True)
        for stale in work.chunks.glob(".*.tmp"):  # left by a run killed while writing
            stale.unlink()
        return work

    def _write(self, path: Path, data: bytes) -> None:
        with replacing(path) as tmp:
            tmp.write_bytes(data)

    def _path(self, c: int) -> Path:
        return self.chunks / f"{c:06d}.npz"

    def _load(self, c: int, rows: int | None = None) -> dict[str, np.ndarray] | str:
        """The chunk's arrays, or why they cannot be used."""
        try:
            with np.load(self._path(c), allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            return f"unreadable ({err})"
        if sorted(data) != sorted(self.roles):
            return f"holds {sorted(data)}, not {sorted(self.roles)}"
        n = len(next(iter(data.values())))
        for role, a in data.items():
            if a.dtype != np.float32 or a.ndim != (1 if role == "score" else 2) or len(a) != n:
                return f"'{role}' has dtype {a.dtype} and shape {a.shape}"
            if not np.isfinite(a).all():
                return f"'{role}' holds non-finite values"
        if rows is not None and n != rows:
            return f"has {n} rows, the chunk has {rows} records"
        return data

    def load(self, c: int, rows: int | None = None) -> dict[str, np.ndarray]:
        """The chunk's arrays; a chunk that cannot be used here (changed during the run?) is an error."""
        data = self._load(c, rows)
        if isinstance(data, str):
            raise UsageError(f"work dir {self.root}: chunk {c} {data} (changed during the run?)")
        return data

    def has(self, c: int, rows: int) -> bool:
        """Whether chunk `c` of `rows` records is finished; a damaged chunk file is removed (and said)."""
        if not self._path(c).is_file():
            return False
        data = self._load(c, rows)
        if isinstance(data, str):
            self.note(f"work dir {self.root}: chunk {c} {data}; computing it again")
            self._path(c).unlink()
            return False
        self.reused += 1
        return True

    def save(self, c: int, arrays: dict[str, np.ndarray]) -> None:
        with replacing(self._path(c)) as tmp, open(tmp, "wb") as f:
            np.savez(f, **{r: np.ascontiguousarray(arrays[r], dtype=np.float32) for r in self.roles})

    def assemble(self, n: int, in_chunks: bool = False) -> dict[str, np.ndarray]:
        """All chunks in order: scores in memory, embeddings as a memory-mapped embeddings.npy of [n, dim] (with
        `in_chunks`, scores as a Column, the file "scores", and embeddings as ChunkRows that read them from the
        chunk files as needed: nothing of n rows in memory)."""
        if self.reused:
            self.note(f"work dir {self.root}: reused {self.reused} finished chunk(s)")
        out: dict[str, np.ndarray] = {}
        scores, embed, start, c, sizes = [], None, 0, 0, []
        if in_chunks and "score" in self.roles:
            scores = self.column("scores", n, "float32")
        while start < n:
            data = self.load(c)
            rows = len(next(iter(data.values())))
            if isinstance(scores, Column):
                scores[start : min(start + rows, n)] = data["score"][: n - start]  # too many rows: said below
            elif "score" in data:
                scores.append(data["score"])
            sizes.append(rows)
            if "embed" in data and not in_chunks:
                if embed is None:
                    with naming(self.root / "embeddings.npy"):
                        embed = create_npy(self.root / "embeddings.npy", (n, data["embed"].shape[1]))
                embed[start : start + rows] = data["embed"]
            start, c = start + rows, c + 1
        if start != n:
            raise UsageError(f"work dir {self.root}: the chunks hold {start} rows for {n} records")
        if "score" in self.roles:
            out["score"] = scores if isinstance(scores, Column) else np.concatenate(scores)
        if in_chunks and "embed" in self.roles:
            out["embed"] = ChunkRows(self, "embed", sizes)
        if embed is not None:
            with naming(self.root / "embeddings.npy"):
                embed.flush()
            del embed
            out["embed"] = np.load(self.root / "embeddings.npy", mmap_mode="r")
        return out

    def column(self, name: str, n: int, dtype) -> Column:
        """A new per-record array of `n` rows on disk, in the file NAME (replacing that of an earlier run)."""
        return Column.create(self.root / name, dtype, n)


class ChunkRows(Rows):
    """One role's [n, dim] rows, read from a work directory's chunk files when asked for (cluster="sample": the
    embeddings are never all in memory, nor assembled into one file)."""

    def __init__(self, work: WorkDir, role: str, sizes: list[int]):
        self.work, self.role = work, role
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.shape = (int(self.starts[-1]), self._chunk(0).shape[1])

    def __len__(self) -> int:
        return self.shape[0]

    def _chunk(self, c: int) -> np.ndarray:
        return self.work.load(int(c))[self.role]

    def blocks(self):
        """(first row, rows) of each chunk in turn."""
        for c in range(len(self.starts) - 1):
            yield int(self.starts[c]), self._chunk(c)

    def __getitem__(self, rows) -> np.ndarray:
        """The rows at the sorted row numbers `rows`, reading only the chunks that hold them."""
        rows = np.asarray(rows, dtype=np.int64)
        parts = []
        for c in np.unique(np.searchsorted(self.starts, rows, side="right") - 1):
            parts.append(self._chunk(c)[rows_in(rows, self.starts[c], self.starts[c + 1]) - self.starts[c]])
        return np.concatenate(parts) if parts else np.zeros((0, self.shape[1]), dtype=np.float32)
