"""The bundle manifest: the only contract between the export step and the runtime.

A bundle is a directory holding `manifest.json` and the files it names. The manifest lists each model (a
scorer, an embedder, or one graph serving both), its ONNX graph per precision, tokenizer, text template, token
limit and input/output names, and the sha256 of every file. Loading verifies all of it before any session is made.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BundleError
from .reading import Reading

FORMAT = "car-onnx-bundle"
VERSION = 1
ROLES = ("score", "embed")
PRECISIONS = ("fp32", "int8", "fp16")
TEMPLATE_FIELDS = ("instruction", "input", "output")


@dataclass(frozen=True)
class Template:
    """How a record becomes text. `without_input` (if set) is used when the record's input is empty."""

    with_input: str
    without_input: str | None = None

    def __post_init__(self):
        for name, text in (("with_input", self.with_input), ("without_input", self.without_input)):
            if text is None:
                continue
            try:
                text.format(instruction="", input="", output="")
                fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(text) if f is not None]
            except (KeyError, IndexError, ValueError, AttributeError) as err:
                raise BundleError(f"template.{name} {_short(text)} is not a valid template: {err!r}") from None
            if any(f not in TEMPLATE_FIELDS or spec or conv for f, spec, conv in fields):
                # a format spec such as {output:>999999999} would make every text a gigabyte
                raise BundleError(
                    f"template.{name} {_short(text)} may only hold {{instruction}}, {{input}} and "
                    "{output}, without conversions or format specs"
                )

    def render(self, instruction: str, input: str, output: str) -> str:
        return self._pick(input).format(instruction=instruction, input=input, output=output)

    def response_start(self, instruction: str, input: str) -> int:
        """Where the output begins in the rendered text (in characters): the model's response span starts there.
        Needs `{output}` once in each template (checked for models that read a response mask)."""
        return len(self._pick(input).split("{output}")[0].format(instruction=instruction, input=input))

    def splits_output(self) -> bool:
        """Whether each template holds `{output}` exactly once, so that `response_start` is defined."""
        return all(t.count("{output}") == 1 for t in (self.with_input, self.without_input) if t is not None)

    def _pick(self, input: str) -> str:
        return self.without_input if (not input and self.without_input is not None) else self.with_input


@dataclass(frozen=True)
class Variant:
    """One precision of a model: its graph file and, for reduced precisions, fidelity measured at export."""

    graph: str
    fidelity: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    """One ONNX model of a bundle, validated on construction."""

    name: str
    roles: tuple[str, ...]
    tokenizer: str
    template: Template
    max_length: int
    pad_id: int
    inputs: tuple[str, ...]
    outputs: dict  # role -> graph output name
    variants: dict  # precision -> Variant
    embedding_dim: int | None = None
    info: dict = field(default_factory=dict)  # free-form provenance (base model, training metrics, ...)
    reading: Reading | None = None  # how a long answer is read (reading.py); None: its first max_length tokens

    def __post_init__(self):
        where = f"model {_short(self.name)}"
        if not self.roles or any(r not in ROLES for r in self.roles):
            raise BundleError(f"{where}: roles must be a non-empty subset of {ROLES}, got {list(self.roles)}")
        if set(self.outputs) != set(self.roles):
            raise BundleError(f"{where}: outputs must name one graph output per role {list(self.roles)}")
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise BundleError(f"{where}: max_length must be an integer >= 2, got {_short(self.max_length)}")
        if not self.variants or any(p not in PRECISIONS for p in self.variants):
            raise BundleError(f"{where}: precisions must be a non-empty subset of {PRECISIONS}")
        if "input_ids" not in self.inputs or "attention_mask" not in self.inputs:
            raise BundleError(f"{where}: inputs must include input_ids and attention_mask, got {list(self.inputs)}")
        if "response_mask" in self.inputs and not self.template.splits_output():
            raise BundleError(f"{where}: a model reading response_mask needs {{output}} exactly once in its template")

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "roles": list(self.roles),
            "tokenizer": self.tokenizer,
            "template": {"with_input": self.template.with_input, "without_input": self.template.without_input},
            "max_length": self.max_length,
            "pad_id": self.pad_id,
            "inputs": list(self.inputs),
            "outputs": dict(self.outputs),
            "embedding_dim": self.embedding_dim,
            "variants": {p: {"graph": v.graph, "fidelity": v.fidelity} for p, v in self.variants.items()},
            "info": self.info,
            **({"reading": self.reading.to_json()} if self.reading is not None else {}),
        }

    @classmethod
    def from_json(cls, d: dict) -> ModelSpec:
        try:
            return cls(
                name=d["name"],
                roles=tuple(d["roles"]),
                tokenizer=d["tokenizer"],
                template=Template(**d["template"]),
                max_length=d["max_length"],
                pad_id=d["pad_id"],
                inputs=tuple(d["inputs"]),
                outputs=dict(d["outputs"]),
                variants={p: Variant(**v) for p, v in d["variants"].items()},
                embedding_dim=d.get("embedding_dim"),
                info=d.get("info", {}),
                reading=Reading(**d["reading"]) if "reading" in d else None,
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise BundleError(f"manifest model entry is malformed ({err!r})") from None

    def files(self) -> list[str]:
        return [self.tokenizer] + [v.graph for v in self.variants.values()]


@dataclass(frozen=True)
class Manifest:
    models: tuple[ModelSpec, ...]
    files: dict  # relative path -> {"sha256": ..., "bytes": ...}
    created_by: str = ""

    def model_for(self, role: str) -> ModelSpec | None:
        return next((m for m in self.models if role in m.roles), None)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "created_by": self.created_by,
            "models": [m.to_json() for m in self.models],
            "files": self.files,
        }


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _inside(root: Path, rel: str) -> Path:
    """Resolve a manifest path, refusing any that leaves the bundle directory."""
    try:
        path = (root / rel).resolve()
    except (OSError, ValueError) as err:  # a NUL byte, a name too long, a symlink loop
        raise BundleError(f"{root / 'manifest.json'}: file path {_short(rel)} is not a usable path ({err})") from None
    if Path(rel).is_absolute() or not path.is_relative_to(root.resolve()):  # '..', or a symlink leading out
        raise BundleError(f"{root / 'manifest.json'}: file path {_short(rel)} leaves the bundle directory")
    return path


MAX_WINDOWS = 4096  # windows of one answer: far above any bundle's rule
MAX_LENGTH = 1 << 20  # tokens: far above any model's context; larger numbers would overflow the tokenizer
MODEL_KEYS = ("name", "roles", "tokenizer", "template", "max_length", "pad_id", "inputs", "outputs", "variants")


def _short(value) -> str:
    """A value for a one-line message: its repr (newlines escaped), cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _check_structure(path: Path, raw: dict) -> None:
    """Every key the runtime reads, of the type and range it needs: a hostile manifest is one BundleError here,
    not a TypeError (or a huge allocation) later."""

    def need(ok: bool, where: str, what: str, value) -> None:
        if not ok:
            raise BundleError(f"{path}: {where} must be {what}, got {_short(value)}")

    need(isinstance(raw.get("created_by", ""), str), "'created_by'", "a string", raw.get("created_by"))
    for rel, entry in raw["files"].items():
        need(
            isinstance(entry, dict)
            and isinstance(entry.get("sha256"), str)
            and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]) is not None
            and _is_int(entry.get("bytes"), 0, 1 << 62),
            f"files[{_short(rel)}]",
            "an object with a 64-hex-digit 'sha256' and a byte count 'bytes'",
            entry,
        )
    for i, d in enumerate(raw["models"]):
        where = f"models[{i}]"
        need(isinstance(d, dict), where, "an object", d)
        missing = [key for key in MODEL_KEYS if key not in d]
        need(not missing, where, f"an object with the keys {', '.join(MODEL_KEYS)}", sorted(d))
        need(isinstance(d["name"], str) and d["name"] != "", f"{where}.name", "a non-empty string", d["name"])
        need(_strings(d["roles"]), f"{where}.roles", "a list of strings", d["roles"])
        need(isinstance(d["tokenizer"], str), f"{where}.tokenizer", "a path (string)", d["tokenizer"])
        t = d["template"]
        need(
            isinstance(t, dict)
            and set(t) <= {"with_input", "without_input"}
            and isinstance(t.get("with_input"), str)
            and isinstance(t.get("without_input"), (str, type(None))),
            f"{where}.template",
            "an object with a string 'with_input' and an optional string 'without_input'",
            t,
        )
        need(
            _is_int(d["max_length"], 2, MAX_LENGTH),
            f"{where}.max_length",
            f"an integer from 2 to {MAX_LENGTH}",
            d["max_length"],
        )
        need(_is_int(d["pad_id"], 0, (1 << 31) - 1), f"{where}.pad_id", "a token id (integer >= 0)", d["pad_id"])
        need(_strings(d["inputs"]), f"{where}.inputs", "a list of strings", d["inputs"])
        need(
            isinstance(d["outputs"], dict) and all(isinstance(v, str) for v in d["outputs"].values()),
            f"{where}.outputs",
            "an object of output names",
            d["outputs"],
        )
        need(
            isinstance(d["variants"], dict)
            and all(
                isinstance(v, dict)
                and set(v) <= {"graph", "fidelity"}
                and isinstance(v.get("graph"), str)
                and isinstance(v.get("fidelity", {}), dict)
                for v in d["variants"].values()
            ),
            f"{where}.variants",
            "an object of {'graph': path, 'fidelity': {...}} per precision",
            d["variants"],
        )
        need(
            d.get("embedding_dim") is None or _is_int(d["embedding_dim"], 1, MAX_LENGTH),
            f"{where}.embedding_dim",
            "a positive integer",
            d.get("embedding_dim"),
        )
        need(isinstance(d.get("info", {}), dict), f"{where}.info", "an object", d.get("info"))
        need(
            "reading" not in d
            or (
                isinstance(d["reading"], dict)
                and set(d["reading"]) == {"max_windows"}
                and _is_int(d["reading"]["max_windows"], 1, MAX_WINDOWS)
            ),
            f"{where}.reading",
            f"an object {{'max_windows': an integer from 1 to {MAX_WINDOWS}}}",
            d.get("reading"),
        )


def read_manifest(root: Path) -> Manifest:
    """Parse and validate `root/manifest.json` without checking file hashes."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise BundleError(f"{root}: not a bundle (no manifest.json)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise BundleError(f"{path}: not a car-onnx bundle manifest (format must be {FORMAT!r})")
    if type(raw.get("version")) is not int or raw["version"] != VERSION:
        raise BundleError(
            f"{path}: unknown manifest version {_short(raw.get('version'))}; this car-onnx reads version {VERSION}"
        )
    if not isinstance(raw.get("models"), list) or not isinstance(raw.get("files"), dict):
        raise BundleError(f"{path}: 'models' must be a list and 'files' an object")
    _check_structure(path, raw)
    manifest = Manifest(
        models=tuple(ModelSpec.from_json(m) for m in raw["models"]),
        files=raw["files"],
        created_by=raw.get("created_by", ""),
    )
    if not manifest.models:
        raise BundleError(f"{path}: the bundle holds no model")
    for model in manifest.models:
        for rel in model.files():
            if rel not in manifest.files:
                raise BundleError(
                    f"{path}: model {_short(model.name)} names {_short(rel)}, which has no sha256 in 'files'"
                )
    for rel in manifest.files:
        _inside(Path(root), rel)
    return manifest


def verify_bundle(root) -> int:
    """`car-onnx verify`: check every file the manifest lists (not only those a run loads) against its sha256;
    one BundleError names each missing or changed file. Returns how many files were checked."""
    root = Path(root)
    manifest = read_manifest(root)
    wrong = []
    for rel, entry in manifest.files.items():
        path = _inside(root, rel)
        if not path.is_file():
            wrong.append(f"{_short(rel)} (missing)")
        elif sha256_file(path) != entry["sha256"]:
            wrong.append(f"{_short(rel)} (sha256 mismatch: modified or corrupted)")
    if wrong:
        raise BundleError(
            f"{root}: {len(wrong)} of {len(manifest.files)} file(s) do not match the manifest: "
            f"{', '.join(wrong)}; re-export or re-copy the bundle"
        )
    return len(manifest.files)


def verify_files(root: Path, manifest: Manifest, names: list[str] | None = None) -> None:
    """Check that each listed file (default: all) exists and matches its sha256."""
    for rel in names if names is not None else list(manifest.files):
        path = _inside(Path(root), rel)
        if not path.is_file():
            raise BundleError(f"{root}: file {_short(rel)} named in the manifest is missing")
        digest = sha256_file(path)
        if digest != manifest.files[rel]["sha256"]:
            raise BundleError(
                f"{path}: sha256 mismatch (manifest {manifest.files[rel]['sha256'][:12]}..., file {digest[:12]}...):"
                " the bundle was modified or corrupted; re-export or re-copy it"
            )


def write_manifest(root: Path, models: list[ModelSpec], created_by: str) -> Manifest:
    """Hash every file the models name (plus ONNX external-data files beside them) and write manifest.json."""
    root = Path(root)
    names: list[str] = []
    for model in models:
        for rel in model.files():
            if rel not in names:
                names.append(rel)
            data = rel + ".data"  # external tensor data written beside a large graph
            if (root / data).is_file() and data not in names:
                names.append(data)
    files = {rel: {"sha256": sha256_file(root / rel), "bytes": (root / rel).stat().st_size} for rel in names}
    manifest = Manifest(models=tuple(models), files=files, created_by=created_by)
    tmp = root / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest.to_json(), indent=2) + "\n", encoding="utf-8")
    tmp.replace(root / "manifest.json")
    return manifest
