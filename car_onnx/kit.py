"""Offline install kits: one archive with every wheel car-onnx needs on a target Python and platform, the
bundle(s), `kit.json` (sha256 of every file) and `install.sh`, which verifies them all before installing anything.

pip downloads the wheels (`pip download --only-binary=:all: --platform ... --python-version ...`). pip judges
environment markers by the Python running it, not the target's, so the kit's requirement tree is then walked again
with the target's markers and whatever is missing is downloaded too. A pure-Python requirement PyPI ships as sources
only (SOURCE_ONLY: pyspark) is first built into a wheel here, which pip then takes from the kit's folder.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from email.parser import HeaderParser
from importlib import metadata, resources
from pathlib import Path
from urllib.parse import unquote, urlparse

from .errors import CarError, UsageError
from .runtime.manifest import read_manifest, sha256_file, verify_files

DIST = "car-onnx"
TOP = "car-onnx-kit"  # the directory the archive unpacks to
PLATFORM_TAG = re.compile(r"(?P<kind>manylinux|musllinux)_(?P<major>\d+)_(?P<minor>\d+)_(?P<arch>\w+)$")
LEGACY_MANYLINUX = {"manylinux1": 5, "manylinux2010": 12, "manylinux2014": 17}  # PEP 600 aliases: glibc 2.N
BUNDLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*$")
# pure-Python distributions PyPI publishes as sources only (pyspark, ~430 MB of jars): their wheels are built here
SOURCE_ONLY = ("pyspark",)


class KitError(CarError):
    """A kit cannot be built: pip failed, or the downloaded wheels do not cover the requirements."""


@dataclass(frozen=True)
class Target:
    """The machine a kit is for: CPython `python_version` ("3.11") on a Linux wheel platform ("manylinux_2_28_x86_64",
    or a legacy alias such as "manylinux2014_x86_64"); `platforms` is every wheel platform tag that machine runs."""

    python_version: str
    platform: str

    def __post_init__(self):
        if not re.fullmatch(r"3\.\d+", self.python_version):
            raise UsageError(
                f"{{python_version}} must be a CPython 3 version such as 3.11, got {self.python_version!r}",
                "python_version",
            )
        self.platforms  # validates the platform tag

    @property
    def abi(self) -> str:
        return "cp" + self.python_version.replace(".", "")

    @property
    def platforms(self) -> list[str]:
        """The tag itself and every older one of its kind (a glibc 2.28 machine runs manylinux_2_17 wheels)."""
        name = self.platform
        for legacy, minor in LEGACY_MANYLINUX.items():
            if name.startswith(legacy + "_"):
                name = f"manylinux_2_{minor}_{name[len(legacy) + 1 :]}"
        m = PLATFORM_TAG.match(name)
        if m is None or m["major"] != {"manylinux": "2", "musllinux": "1"}[m["kind"]]:
            raise UsageError(
                f"{{platform}} must be a Linux wheel platform tag such as manylinux2014_x86_64, "
                f"manylinux_2_28_aarch64 or musllinux_1_2_x86_64, got {self.platform!r}",
                "platform",
            )
        kind, major, arch = m["kind"], int(m["major"]), m["arch"]
        lowest = 0 if kind == "musllinux" else (5 if arch in ("x86_64", "i686") else 17)
        tags = [f"{kind}_{major}_{minor}_{arch}" for minor in range(int(m["minor"]), lowest - 1, -1)]
        if kind == "manylinux":
            tags += [
                f"{legacy}_{arch}"
                for legacy, minor in LEGACY_MANYLINUX.items()
                if minor <= int(m["minor"]) and (legacy == "manylinux2014" or arch in ("x86_64", "i686"))
            ]
        return tags

    @property
    def arch(self) -> str:
        return PLATFORM_TAG.match(self.platforms[0])["arch"]

    def markers(self, extra: str = "") -> dict:
        """PEP 508 marker environment of the target (its patch release is unknown: taken as .0)."""
        return {
            "implementation_name": "cpython",
            "implementation_version": self.python_version + ".0",
            "os_name": "posix",
            "platform_machine": self.arch,
            "platform_python_implementation": "CPython",
            "platform_release": "",
            "platform_system": "Linux",
            "platform_version": "",
            "python_full_version": self.python_version + ".0",
            "python_version": self.python_version,
            "sys_platform": "linux",
            "extra": extra,
        }

    def pip_options(self) -> list[str]:
        out = [
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            self.python_version,
            "--abi",
            self.abi,
        ]
        for tag in self.platforms:
            out += ["--platform", tag]
        return out

    @classmethod
    def here(cls, python_version: str | None = None, platform: str | None = None) -> Target:
        """The target given, with this interpreter's Python version and the newest Linux wheel platform this
        machine runs for what is not given."""
        from packaging.tags import sys_tags

        version = python_version or f"{sys.version_info.major}.{sys.version_info.minor}"
        platform = platform or next((t.platform for t in sys_tags() if PLATFORM_TAG.match(t.platform)), None)
        if platform is None:
            raise UsageError(
                "{platform}: this machine runs no manylinux or musllinux wheels; give the target's", "platform"
            )
        return cls(version, platform)


@dataclass(frozen=True)
class Kit:
    """A written kit: where, its sha256, and the megabytes of wheels and bundles it holds."""

    path: Path
    sha256: str
    requirement: str
    target: Target
    wheels: list[str]
    wheels_mb: float
    bundles_mb: float


def declared_extras() -> list[str]:
    """The extras car-onnx declares, read from the installed distribution's metadata."""
    return sorted(metadata.metadata(DIST).get_all("Provides-Extra") or [])


def parse_extras(extras: list[str]) -> list[str]:
    """Validated, sorted and deduplicated extras (each against the extras car-onnx declares)."""
    declared = declared_extras()
    for extra in extras:
        if extra not in declared:
            raise UsageError(f"{{extras}}: unknown extra {extra!r}; car-onnx declares {', '.join(declared)}", "extras")
    return sorted(set(extras))


def source_tree() -> Path:
    """The source tree of this car-onnx, to build its wheel: the checkout it runs from (`pip install -e DIR`), else
    the directory it was installed from (`pip install DIR`, recorded in direct_url.json) if that is still there."""
    candidates = [Path(__file__).resolve().parents[1]]
    for dist in metadata.distributions(name=DIST):
        url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
        if url.startswith("file://"):
            candidates.append(Path(unquote(urlparse(url).path)))
    for root in candidates:
        if (root / "pyproject.toml").is_file() and (root / "car_onnx" / "__init__.py").is_file():
            return root
    raise KitError(
        "car-onnx pack builds car-onnx's own wheel from its source tree, but this car-onnx was not "
        "installed from one: pip install -e DIR (a clone of car-onnx), then run pack again"
    )


def _pip(args: list[str], what: str) -> None:
    """Run pip in this interpreter; a failure becomes one KitError line with pip's own error lines."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", *args, "--disable-pip-version-check"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR:")] or lines[-3:]
        raise KitError(f"pip {what} failed (exit {proc.returncode}): {' | '.join(errors)}")


def wheel_requirements(path: Path) -> tuple[str, str, list]:
    """Name, version and Requires-Dist (as packaging Requirements) of a wheel, from its METADATA."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    with zipfile.ZipFile(path) as zf:
        name = next((n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)), None)
        if name is None:
            raise KitError(f"{path.name}: not a wheel (no .dist-info/METADATA)")
        meta = HeaderParser().parsestr(zf.read(name).decode("utf-8"))
    requires = [Requirement(r) for r in meta.get_all("Requires-Dist") or []]
    return canonicalize_name(meta["Name"]), meta["Version"], requires


def applies(req, target: Target, extras) -> bool:
    """Whether requirement `req` holds on `target` for a distribution installed with `extras` (its marker judged
    with the target's environment, once per extra and once without)."""
    return req.marker is None or any(req.marker.evaluate(target.markers(e)) for e in ("", *extras))


def missing_requirements(wheels: list[Path], roots: list, target: Target) -> list:
    """Requirements of `roots` (and of theirs, recursively, with the target's markers) that no wheel satisfies;
    returned without their markers."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, list] = {}
    for path in wheels:
        name, version, requires = wheel_requirements(path)
        found.setdefault(name, []).append((version, requires))
    missing, seen, todo = [], set(), list(roots)
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), str(req.specifier), tuple(sorted(req.extras)))
        if key in seen:
            continue
        seen.add(key)
        fits = [
            requires for version, requires in found.get(key[0], []) if req.specifier.contains(version, prereleases=True)
        ]
        if not fits:
            missing.append(req)
            continue
        for dep in fits[0]:
            if applies(dep, target, req.extras):
                dep = Requirement(str(dep))
                dep.marker = None  # decided here: pip would judge it by the Python running pip
                todo.append(dep)
    return missing


def download_wheels(folder: Path, extras: list[str], target: Target) -> str:
    """Build car-onnx's wheel into `folder` and download every wheel it needs with `extras` on `target`; returns
    the requirement install.sh installs. Repeats the download for what pip left out by the host's markers."""
    from packaging.requirements import Requirement

    _pip(["wheel", "--no-deps", "--wheel-dir", str(folder), str(source_tree())], "wheel (building car-onnx)")
    own = next(folder.glob("car_onnx-*.whl"))
    version = wheel_requirements(own)[1]
    spec = f"{DIST}[{','.join(extras)}]" if extras else DIST
    build_wheels(folder, source_only(own, extras, target))
    options = [*target.pip_options(), "--find-links", str(folder), "--dest", str(folder)]
    _pip(["download", *options, f"{spec} @ {own.as_uri()}"], "download")
    roots = [Requirement(f"{spec}=={version}")]
    for _ in range(5):
        missing = missing_requirements(sorted(folder.glob("*.whl")), roots, target)
        if not missing:
            return f"{spec}=={version}"
        _pip(["download", *options, *map(str, missing)], "download")
    raise KitError(
        f"the wheels still miss {', '.join(map(str, missing))} for Python {target.python_version} on {target.platform}"
    )


def source_only(wheel: Path, extras: list[str], target: Target) -> list[str]:
    """The requirements of `wheel` with `extras` on `target` that PyPI publishes as sources only (SOURCE_ONLY)."""
    from packaging.utils import canonicalize_name

    found = []
    for req in wheel_requirements(wheel)[2]:
        if canonicalize_name(req.name) in SOURCE_ONLY and applies(req, target, extras):
            req.marker = None
            found.append(str(req))
    return found


def build_wheels(folder: Path, requirements: list[str]) -> None:
    """A wheel built here into `folder` from each requirement's sources. Only a pure-Python one (tagged none-any)
    installs on any target: any other is removed and refused."""
    for req in requirements:
        before = set(folder.glob("*.whl"))
        _pip(["wheel", "--no-deps", "--wheel-dir", str(folder), req], f"wheel (building {req})")
        for path in sorted(set(folder.glob("*.whl")) - before):
            if not path.name.endswith("-none-any.whl"):
                path.unlink()
                raise KitError(f"{req}: its wheel built from sources, {path.name}, is not pure Python")


def bundle_names(bundles: list[Path]) -> list[str]:
    """The names the bundles get in the kit (their directory names), checked: install.sh puts the first at the
    default bundle location and each other one beside it under its name, next to the default `venv`."""
    names = [Path(b).resolve().name for b in bundles]
    if not bundles:
        raise UsageError("{bundle}: a kit needs at least one bundle", "bundle")
    for name in names:
        if not BUNDLE_NAME.match(name) or names.count(name) > 1 or name in ("default", "venv") and name != names[0]:
            raise UsageError(
                f"{{bundle}}: the bundle directory names must be distinct ([A-Za-z0-9._-]) and only the "
                f"first may be called 'default' or 'venv'; got {', '.join(names)}",
                "bundle",
            )
    return names


def write_kit(output: Path, folder: Path, bundles: list[Path], requirement: str, target: Target) -> Kit:
    """Write the kit archive from the wheels in `folder` and the bundle directories (each verified against its own
    manifest; only the files it names are taken). The archive is written whole or not at all."""
    names = bundle_names(bundles)
    files: dict[str, Path] = {}
    for path in sorted(folder.glob("*.whl")):
        files[f"wheels/{path.name}"] = path
    for root, name in zip(bundles, names):
        manifest = read_manifest(root)
        verify_files(root, manifest)
        for rel in ["manifest.json", *manifest.files]:
            files[f"bundles/{name}/{rel}"] = Path(root) / rel
    sums = {rel: {"sha256": sha256_file(path), "bytes": path.stat().st_size} for rel, path in files.items()}
    template = resources.files("car_onnx").joinpath("data/install.sh").read_text()
    script = (
        template.replace("@REQUIREMENT@", requirement)
        .replace("@PYTHON_VERSION@", target.python_version)
        .replace("@BUNDLES@", " ".join(names))
        .replace("@SHA256@", "\n".join(f"{s['sha256']}  {rel}" for rel, s in sums.items()))
    )
    mb = lambda prefix: round(sum(s["bytes"] for rel, s in sums.items() if rel.startswith(prefix)) / 2**20, 1)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "install.sh").write_text(script)
        sums["install.sh"] = {"sha256": sha256_file(Path(tmp) / "install.sh"), "bytes": len(script.encode())}
        info = {
            "format": "car-onnx-kit",
            "version": 1,
            "requirement": requirement,
            "target": {
                "python_version": target.python_version,
                "platform": target.platform,
                "abi": target.abi,
                "platforms": target.platforms,
            },
            "bundles": names,
            "wheels_mb": mb("wheels/"),
            "bundles_mb": mb("bundles/"),
            "files": sums,
        }
        (Path(tmp) / "kit.json").write_text(json.dumps(info, indent=2) + "\n")
        files = {"install.sh": Path(tmp) / "install.sh", "kit.json": Path(tmp) / "kit.json", **files}
        partial = output.with_name(f".{output.name}.partial")
        try:
            with tarfile.open(partial, "w:gz" if output.suffix in (".gz", ".tgz") else "w") as tar:
                for rel, path in files.items():
                    entry = tar.gettarinfo(path, f"{TOP}/{rel}")
                    entry.mode, entry.uid, entry.gid, entry.uname, entry.gname = (
                        (0o755 if rel == "install.sh" else 0o644),
                        0,
                        0,
                        "",
                        "",
                    )
                    with open(path, "rb") as f:
                        tar.addfile(entry, f)
            os.replace(partial, output)
        finally:
            partial.unlink(missing_ok=True)
    return Kit(
        output,
        sha256_file(output),
        requirement,
        target,
        [p.name for p in sorted(folder.glob("*.whl"))],
        info["wheels_mb"],
        info["bundles_mb"],
    )


def pack(
    output: Path,
    bundles: list[Path],
    extras: list[str] = (),
    python_version: str | None = None,
    platform: str | None = None,
    force: bool = False,
) -> Kit:
    """Build an offline install kit at `output` for `python_version` on `platform` (default: this machine's)."""
    output = Path(output)
    if output.exists() and not force:
        raise UsageError(f"{output}: already exists; pass {{force=True}} to replace it", "force=True")
    if not output.parent.is_dir():
        raise UsageError(f"{output}: no directory {output.parent}")
    target = Target.here(python_version, platform)
    extras = parse_extras(list(extras))
    bundle_names(bundles)
    for root in bundles:
        read_manifest(root)  # fail on a bad bundle before the downloads
    with tempfile.TemporaryDirectory(prefix="car-onnx-kit-") as tmp:
        requirement = download_wheels(Path(tmp), extras, target)
        return write_kit(output, Path(tmp), bundles, requirement, target)


__all__ = ["Kit", "KitError", "Target", "pack", "declared_extras"]
