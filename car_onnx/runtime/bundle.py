"""Loading a bundle directory: manifest, integrity check, and the models that serve each role."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import BundleError
from .graph import UNIT_INPUTS, OnnxModel
from .manifest import Manifest, read_manifest, verify_files
from .reading import combine
from .session import SessionConfig
from .tokenization import DEFAULT_MAX_TOKENS


def data_dir() -> Path:
    """$XDG_DATA_HOME/car-onnx (XDG_DATA_HOME defaults to ~/.local/share): where the exports write by default."""
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "car-onnx"


def default_bundle_dir() -> Path:
    """Where `car-onnx export default` writes and `select` looks: $CAR_ONNX_BUNDLE, else data_dir()/default."""
    if os.environ.get("CAR_ONNX_BUNDLE"):
        return Path(os.environ["CAR_ONNX_BUNDLE"])
    return data_dir() / "default"


def find_bundle(path=None) -> Path:
    """The bundle to use: `path` if given, else the default location (with how to build it if missing)."""
    if path is not None:
        return Path(path)
    root = default_bundle_dir()
    if not (root / "manifest.json").is_file():
        raise BundleError(
            f"no bundle given and no default bundle at {root}; build it with `car-onnx export default` "
            "(needs `pip install 'car-onnx[export]'`), or pass --bundle DIR / set CAR_ONNX_BUNDLE"
        )
    return root


class Bundle:
    """A bundle's models, each loaded on first use (its files checked against their sha256 first). Safe to use
    from several threads: loading is locked, and onnxruntime sessions run concurrently."""

    def __init__(self, root: Path, config: SessionConfig):
        self.root, self.config = Path(root), config
        self.manifest: Manifest = read_manifest(self.root)
        self._loaded: dict[str, OnnxModel] = {}
        self._lock = threading.Lock()

    def model(self, role: str) -> OnnxModel:
        """The model serving `role`; one graph serving both roles is loaded once."""
        spec = self.manifest.model_for(role)
        if spec is None:
            raise BundleError(f"{self.root}: the bundle has no model for role '{role}'")
        with self._lock:
            if spec.name not in self._loaded:
                precision = self.config.pick_precision(list(spec.variants), spec.name)
                graph = spec.variants[precision].graph
                used = [spec.tokenizer, graph] + [f for f in [graph + ".data"] if f in self.manifest.files]
                verify_files(self.root, self.manifest, used)
                self._loaded[spec.name] = OnnxModel(spec, self.root, precision, self.config)
            return self._loaded[spec.name]

    def loaded(self) -> list[OnnxModel]:
        """The models loaded so far."""
        with self._lock:
            return list(self._loaded.values())

    def run(
        self,
        records,
        roles: tuple[str, ...],
        max_tokens: int = DEFAULT_MAX_TOKENS,
        progress: Callable[[int], None] | None = None,
        turns: str = "all",
    ) -> dict[str, np.ndarray]:
        """Scores and/or embeddings of `records` (io.records.Record or objects with instruction/input/output and
        `exchanges(turns)`), one pass per model: a model serving both roles computes both in the same forward pass;
        each record is read whole as the model's reading rule says (reading.py: every exchange with `turns="all"`,
        long answers in windows); a text repeated in `records` is run once. `progress` counts records."""
        out: dict[str, np.ndarray] = {}
        models = {role: self.model(role) for role in roles}
        for model in dict.fromkeys(models.values()):
            model_roles = tuple(r for r in roles if models[r] is model)
            units = [model.reader.units(r, turns) for r in records]
            counts = [len(u) for u in units]
            flat = [u for record in units for u in record]
            # a text with where its response starts and its unit inputs (answer loops, window: for a graph that reads
            # them): the same text split elsewhere, or a window of another answer, is another input
            names = model.unit_inputs
            texts = [
                (u.text, u.start if model.reads_response else None, *(float(getattr(u, UNIT_INPUTS[n])) for n in names))
                for u in flat
            ]
            unique = {text: i for i, text in enumerate(dict.fromkeys(texts))}
            starts = [t[1] for t in unique] if model.reads_response else None
            given = {n: [t[2 + k] for t in unique] for k, n in enumerate(names)}
            scaled = _Scaled(progress, len(unique), len(records))
            results = model.run([t[0] for t in unique], model_roles, max_tokens, scaled, starts, given)
            scaled.finish()
            if len(unique) < len(texts):
                where = np.fromiter((unique[t] for t in texts), dtype=np.int64, count=len(texts))
                results = {role: value[where] for role, value in results.items()}
            shares = np.fromiter((u.share for u in flat), dtype=np.float64, count=len(flat))
            for role, value in results.items():  # reading.py: how units combine
                out[role] = combine(value, counts, shares, role == "embed")
        return out


class _Scaled:
    """A progress hook counting records, fed with the texts run (a record may be several texts, several records
    one text): each text counts as records/texts records, the rest at the end."""

    def __init__(self, progress: Callable[[int], None] | None, texts: int, records: int):
        self.progress, self.scale, self.records = progress, records / max(texts, 1), records
        self.texts = self.told = 0

    def __call__(self, n: int) -> None:
        self.texts += n
        now = min(int(self.texts * self.scale), self.records)
        if self.progress and now > self.told:
            self.progress(now - self.told)
        self.told = max(self.told, now)

    def finish(self) -> None:
        if self.progress and self.told < self.records:
            self.progress(self.records - self.told)
        self.told = self.records
