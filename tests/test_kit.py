"""Offline install kits: target tags, the requirement walk with the target's markers, the archive and its
install.sh (refuses a damaged kit before installing anything), and, slow, a real kit packed from PyPI and
installed with no network."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

from car_onnx.errors import BundleError, UsageError
from car_onnx.kit import (
    KitError,
    Target,
    build_wheels,
    bundle_names,
    missing_requirements,
    parse_extras,
    source_only,
    write_kit,
)
from car_onnx.runtime.bundle import default_bundle_dir
from car_onnx_export import tiny

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "car_onnx" / "data" / "sample.json"
HEAVY = ("torch", "transformers", "optimum", "onnx", "sentence_transformers")


def fake_wheel(folder: Path, name: str, version: str, requires: list[str] = ()) -> Path:
    """A wheel holding only its METADATA (enough for the requirement walk and for install.sh's checks)."""
    path = Path(folder) / f"{name}-{version}-py3-none-any.whl"
    meta = "".join(
        [f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", *(f"Requires-Dist: {r}\n" for r in requires)]
    )
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}-{version}.dist-info/METADATA", meta)
    return path


def unpack(kit: Path, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(kit) as tar:
        tar.extractall(into, filter="data")
    return into / "car-onnx-kit"


def run_install(kit_dir: Path, home: Path, *args, **env):
    """install.sh under POSIX sh with HOME and XDG_DATA_HOME in `home` (never the real default bundle)."""
    env = {
        **{k: v for k, v in os.environ.items() if k != "CAR_ONNX_BUNDLE"},
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / "data"),
        **env,
    }
    return subprocess.run(
        ["sh", str(kit_dir / "install.sh"), *map(str, args)], capture_output=True, text=True, env=env, timeout=900
    )


def test_target_platforms_are_the_tag_and_every_older_one():
    assert Target("3.11", "manylinux2014_x86_64").platforms == (
        [f"manylinux_2_{m}_x86_64" for m in range(17, 4, -1)]
        + ["manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64"]
    )
    assert Target("3.12", "manylinux_2_28_aarch64").platforms == (
        [f"manylinux_2_{m}_aarch64" for m in range(28, 16, -1)] + ["manylinux2014_aarch64"]
    )
    assert Target("3.10", "musllinux_1_2_x86_64").platforms == [
        "musllinux_1_2_x86_64",
        "musllinux_1_1_x86_64",
        "musllinux_1_0_x86_64",
    ]
    t = Target("3.11", "manylinux_2_17_x86_64")
    assert t.abi == "cp311" and t.arch == "x86_64"
    options = t.pip_options()
    assert options[:7] == [
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        "3.11",
        "--abi",
        "cp311",
    ]
    assert options[7:] == [x for tag in t.platforms for x in ("--platform", tag)]


def test_target_refuses_what_install_sh_cannot_serve():
    with pytest.raises(UsageError) as err:
        Target("3.11", "win_amd64")
    assert str(err.value) == (
        "platform must be a Linux wheel platform tag such as manylinux2014_x86_64, "
        "manylinux_2_28_aarch64 or musllinux_1_2_x86_64, got 'win_amd64'"
    )
    with pytest.raises(UsageError) as err:
        Target("311", "manylinux2014_x86_64")
    assert str(err.value) == "python_version must be a CPython 3 version such as 3.11, got '311'"


def test_missing_requirements_walks_with_the_targets_markers(tmp_path):
    fake_wheel(
        tmp_path,
        "top",
        "1.0",
        [
            "dep>=2",
            'old-only; python_version < "3.11"',
            'with-x; extra == "x"',
            'with-y; extra == "y"',
            'win-only; sys_platform == "win32"',
            'arm-only; platform_machine == "aarch64"',
        ],
    )
    fake_wheel(tmp_path, "dep", "1.5")
    wheels = sorted(tmp_path.glob("*.whl"))
    root = [Requirement("top[x]==1.0")]
    missing = lambda target: sorted(map(str, missing_requirements(wheels, root, target)))  # noqa: E731
    # pip run by a 3.11 on x86_64 would drop old-only and arm-only: the walk uses the target's markers.
    assert missing(Target("3.10", "manylinux_2_28_x86_64")) == ["dep>=2", "old-only", "with-x"]
    assert missing(Target("3.11", "manylinux_2_28_aarch64")) == ["arm-only", "dep>=2", "with-x"]
    fake_wheel(tmp_path, "dep", "2.1", ["leaf"])
    fake_wheel(tmp_path, "with-x", "0.1")
    wheels = sorted(tmp_path.glob("*.whl"))
    assert missing(Target("3.11", "manylinux_2_28_x86_64")) == ["leaf"]
    assert missing_requirements(wheels, [Requirement("top==2.0")], Target("3.11", "manylinux_2_28_x86_64")) == [
        Requirement("top==2.0")
    ]


def test_what_pypi_ships_as_sources_only_is_built_here_and_must_be_pure_python(tmp_path):
    (tmp_path / "w").mkdir()
    own = fake_wheel(tmp_path / "w", "car_onnx", "0.1.0", ["numpy>=1", 'pyspark>=3.5; extra == "spark"'])
    target = Target("3.11", "manylinux_2_28_x86_64")
    assert source_only(own, ["spark"], target) == ["pyspark>=3.5"]  # pyspark publishes no wheel on PyPI
    assert source_only(own, ["parquet"], target) == []
    setup = "from setuptools import setup\nfrom setuptools.dist import Distribution\n"
    setup += "class Native(Distribution):\n    def has_ext_modules(self):\n        return True\n"
    for name, dist in (("pure", "Distribution"), ("native", "Native")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "setup.py").write_text(setup + f"setup(name='{name}', version='1.0', distclass={dist})\n")
    out = tmp_path / "out"
    out.mkdir()
    build_wheels(out, [str(tmp_path / "pure")])
    assert [p.name for p in out.iterdir()] == ["pure-1.0-py3-none-any.whl"]
    with pytest.raises(KitError) as err:  # a platform wheel built here would not install on another target
        build_wheels(out, [str(tmp_path / "native")])
    assert re.fullmatch(
        f"{re.escape(str(tmp_path / 'native'))}: its wheel built from sources, "
        r"native-1\.0-cp3\d+-cp3\d+-linux_\w+\.whl, is not pure Python",
        str(err.value),
    )
    assert [p.name for p in out.iterdir()] == ["pure-1.0-py3-none-any.whl"]  # removed, not carried


def test_extras_are_those_pyproject_declares():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert parse_extras(["parquet", "parquet"]) == ["parquet"]
    with pytest.raises(UsageError) as err:
        parse_extras(["parquet", "nope"])
    assert str(err.value) == f"extras: unknown extra 'nope'; car-onnx declares {', '.join(sorted(declared))}"


def test_bundle_names_are_distinct_and_leave_room_for_the_default_and_the_venv(tmp_path):
    assert bundle_names([tmp_path / "default", tmp_path / "x" / "lookup-1.0"]) == ["default", "lookup-1.0"]
    assert bundle_names([tmp_path / "venv"]) == ["venv"]  # the first goes to the default location, whatever its name
    for bad in (
        [tmp_path / "a" / "b", tmp_path / "c" / "b"],
        [tmp_path / "a", tmp_path / "default"],
        [tmp_path / "a", tmp_path / "venv"],
        [tmp_path / "my bundle"],
    ):
        with pytest.raises(UsageError) as err:
            bundle_names(bad)
        assert str(err.value) == (
            "bundle: the bundle directory names must be distinct ([A-Za-z0-9._-]) and only "
            f"the first may be called 'default' or 'venv'; got {', '.join(p.name for p in bad)}"
        )
    with pytest.raises(UsageError, match="^bundle: a kit needs at least one bundle$"):
        bundle_names([])


@pytest.fixture
def small_kit(tmp_path):
    """A kit of fake wheels and a tiny bundle, written by write_kit (no pip)."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    fake_wheel(wheels, "car_onnx", "0.1.0", ["alpha"])
    fake_wheel(wheels, "alpha", "1.0")
    bundle = tiny.make_bundle(tmp_path / "mybundle")
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    kit = write_kit(tmp_path / "kit.tar", wheels, [bundle], "car-onnx==0.1.0", Target(here, "manylinux2014_x86_64"))
    return kit, bundle


def test_kit_holds_every_file_with_its_sha256(small_kit, tmp_path):
    kit, bundle = small_kit
    with tarfile.open(kit.path) as tar:
        members = {m.name: m for m in tar.getmembers()}
        data = {name: tar.extractfile(m).read() for name, m in members.items()}
    info = json.loads(data["car-onnx-kit/kit.json"])
    bundle_files = sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file())
    assert sorted(members) == sorted(
        [
            "car-onnx-kit/install.sh",
            "car-onnx-kit/kit.json",
            "car-onnx-kit/wheels/alpha-1.0-py3-none-any.whl",
            "car-onnx-kit/wheels/car_onnx-0.1.0-py3-none-any.whl",
        ]
        + [f"car-onnx-kit/bundles/mybundle/{f}" for f in bundle_files]
    )
    assert sorted(info["files"]) == sorted(
        n.removeprefix("car-onnx-kit/") for n in members if not n.endswith("kit.json")
    )
    for rel, entry in info["files"].items():
        assert entry == {
            "sha256": hashlib.sha256(data[f"car-onnx-kit/{rel}"]).hexdigest(),
            "bytes": len(data[f"car-onnx-kit/{rel}"]),
        }, rel
    for f in bundle_files:
        assert data[f"car-onnx-kit/bundles/mybundle/{f}"] == (bundle / f).read_bytes()
    assert members["car-onnx-kit/install.sh"].mode == 0o755
    assert info["requirement"] == "car-onnx==0.1.0" and info["bundles"] == ["mybundle"]
    assert kit.sha256 == hashlib.sha256(kit.path.read_bytes()).hexdigest()
    assert not list(tmp_path.glob(".kit.tar.partial"))


def test_install_refuses_a_damaged_kit_before_installing_anything(small_kit, tmp_path):
    kit, _ = small_kit
    kit_dir = unpack(kit.path, tmp_path / "far")
    wheel = kit_dir / "wheels" / "alpha-1.0-py3-none-any.whl"
    raw = bytearray(wheel.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    wheel.write_bytes(bytes(raw))
    (kit_dir / "bundles" / "mybundle" / "joint" / "tokenizer.json").unlink()
    home = tmp_path / "home"
    home.mkdir()
    run = run_install(kit_dir, home)
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        "install.sh: wheels/alpha-1.0-py3-none-any.whl: sha256 mismatch",
        "install.sh: bundles/mybundle/joint/tokenizer.json: missing",
        "install.sh: the kit is damaged (files above): copy it again; nothing was installed",
    ]
    assert run.stdout == "" and list(home.iterdir()) == []


def test_install_refuses_another_python_and_a_foreign_bundle(small_kit, tmp_path):
    kit, bundle = small_kit
    kit_dir = unpack(kit.path, tmp_path / "far")
    home = tmp_path / "home"
    home.mkdir()
    shim = tmp_path / "python-old"
    shim.write_text("#!/bin/sh\necho 3.2\n")
    shim.chmod(0o755)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    run = run_install(kit_dir, home, PYTHON=str(shim))
    assert run.returncode == 1 and run.stderr == (
        f"install.sh: the kit holds wheels for Python {here} but {shim} is Python 3.2: set PYTHON to a Python "
        f"{here} interpreter; nothing was installed\n"
    )
    other = tiny.make_bundle(home / "data" / "car-onnx" / "default", seed=5)
    run = run_install(kit_dir, home)
    assert run.returncode == 1 and run.stderr == (
        f"install.sh: {other} already holds another bundle: move it away or set CAR_ONNX_BUNDLE to another "
        "directory; nothing was installed\n"
    )
    assert sorted(p.name for p in (home / "data" / "car-onnx").iterdir()) == ["default"]


def test_write_kit_refuses_a_tampered_bundle_and_leaves_no_output(tmp_path):
    bundle = tiny.make_bundle(tmp_path / "b")
    (bundle / "joint" / "tokenizer.json").write_text("{}")
    with pytest.raises(BundleError, match=r"tokenizer.json: sha256 mismatch"):
        write_kit(tmp_path / "kit.tar", tmp_path, [bundle], "car-onnx==0.1.0", Target("3.11", "manylinux2014_x86_64"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_pack_command_errors_are_one_line(tmp_path):
    cli = [sys.executable, "-m", "car_onnx", "pack", "-o", str(tmp_path / "kit.tar"), "-b", str(tmp_path)]
    run = subprocess.run(cli + ["--extras", "parquet,nope"], capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.splitlines()[-1].startswith("car-onnx: error: --extras: unknown extra 'nope'; car-onnx declares")
    run = subprocess.run(cli + ["--platform", "macosx_11_0_arm64"], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.splitlines()[-1] == (
        "car-onnx: error: --platform must be a Linux wheel platform tag such as manylinux2014_x86_64, "
        "manylinux_2_28_aarch64 or musllinux_1_2_x86_64, got 'macosx_11_0_arm64'"
    )
    (tmp_path / "kit.tar").write_text("mine")
    run = subprocess.run(cli, capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.splitlines()[-1] == (
        f"car-onnx: error: {tmp_path / 'kit.tar'}: already exists; pass --force to replace it"
    )
    assert (tmp_path / "kit.tar").read_text() == "mine"


def _offline() -> list[str]:
    """A command prefix with no network at all (a new network namespace) where this machine allows one."""
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True) if shutil.which("unshare") else None
    return ["unshare", "--net"] if probe is not None and probe.returncode == 0 else []


@pytest.mark.slow
def test_kit_packed_with_pip_installs_and_selects_with_no_network(tmp_path):
    bundle = default_bundle_dir()
    if not (bundle / "manifest.json").is_file():
        pytest.skip(f"no default bundle at {bundle}: `make select` builds it")
    kit_path = tmp_path / "kit.tar"
    pack = subprocess.run(
        [sys.executable, "-m", "car_onnx", "pack", "-o", str(kit_path)], capture_output=True, text=True, timeout=1200
    )
    assert pack.returncode == 0, pack.stderr[-3000:]
    info = json.loads(tarfile.open(kit_path).extractfile("car-onnx-kit/kit.json").read())
    wheels = [rel.split("/")[1] for rel in info["files"] if rel.startswith("wheels/")]
    names = {w.split("-")[0].lower() for w in wheels}
    assert {"car_onnx", "onnxruntime", "tokenizers", "numpy", "scipy", "scikit_learn", "typer"} <= names
    assert not names & {"torch", "transformers", "optimum", "onnx", "sentence_transformers"}
    assert info["requirement"] == "car-onnx==0.1.0" and info["bundles"] == [bundle.name]

    far, home = tmp_path / "far", tmp_path / "home"
    home.mkdir()
    kit_dir = unpack(kit_path, far)
    offline = {
        "PIP_NO_INDEX": "1",
        "https_proxy": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
        "HF_HUB_OFFLINE": "1",
    }
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("CAR_ONNX_BUNDLE", "PYTHONPATH")},
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / "data"),
        **offline,
    }
    install = subprocess.run(
        [*_offline(), "sh", str(kit_dir / "install.sh")], capture_output=True, text=True, env=env, timeout=1200, cwd=far
    )
    assert install.returncode == 0, install.stderr[-3000:]
    placed = home / "data" / "car-onnx" / "default"
    assert f"bundle: {placed} (" in install.stdout
    for rel in json.loads((bundle / "manifest.json").read_text())["files"]:
        assert (placed / rel).read_bytes() == (bundle / rel).read_bytes(), rel
    venv = home / "data" / "car-onnx" / "venv"
    for heavy in HEAVY:
        probe = subprocess.run([str(venv / "bin" / "python"), "-c", f"import {heavy}"], capture_output=True, env=env)
        assert probe.returncode != 0, f"{heavy} is in the kit's environment"

    # select with the installed car-onnx (default bundle found where install.sh put it) vs. this environment's
    ours, theirs = tmp_path / "ours.json", tmp_path / "theirs.json"
    args = ["select", str(SAMPLE), "--n1", "5", "-q"]
    run = subprocess.run(
        [*_offline(), str(venv / "bin" / "car-onnx"), *args, "-o", str(theirs)],
        capture_output=True,
        text=True,
        env=env,
        cwd=far,
    )
    assert run.returncode == 0, run.stderr
    subprocess.run([sys.executable, "-m", "car_onnx", *args, "-o", str(ours), "-b", str(bundle)], check=True)
    mine, kit_rows = json.loads(ours.read_text()), json.loads(theirs.read_text())
    assert [r["instruction"] for r in kit_rows] == [r["instruction"] for r in mine]
    assert all(abs(a["score"] - b["score"]) < 1e-4 for a, b in zip(kit_rows, mine))

    # the same kit with one byte of one wheel flipped: refused, naming the wheel, nothing installed
    far2, home2 = tmp_path / "far2", tmp_path / "home2"
    home2.mkdir()
    kit_dir = unpack(kit_path, far2)
    wheel = next(w for w in wheels if w.startswith("onnxruntime-"))
    raw = bytearray((kit_dir / "wheels" / wheel).read_bytes())
    raw[12345] ^= 0xFF
    (kit_dir / "wheels" / wheel).write_bytes(bytes(raw))
    run = subprocess.run(
        ["sh", str(kit_dir / "install.sh")],
        capture_output=True,
        text=True,
        env={**env, "HOME": str(home2), "XDG_DATA_HOME": str(home2 / "data")},
    )
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        f"install.sh: wheels/{wheel}: sha256 mismatch",
        "install.sh: the kit is damaged (files above): copy it again; nothing was installed",
    ]
    assert list(home2.iterdir()) == []


def _other_python() -> tuple[str, str] | None:
    """A CPython 3.10 interpreter (not the one running the tests) with venv: python3.10 on PATH or under pyenv."""
    pyenv = sorted(map(str, Path.home().glob(".pyenv/versions/3.10.*/bin/python3.10")))
    candidates = [shutil.which("python3.10") or "", *pyenv]
    for exe in filter(None, candidates):
        probe = subprocess.run(
            [exe, "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True
        )
        if probe.returncode == 0 and probe.stdout.strip() == "3.10":
            return exe, "3.10"
    return None


@pytest.mark.slow
@pytest.mark.skipif(sys.version_info[:2] == (3, 10), reason="the test packs for 3.10 from another Python")
def test_kit_for_another_python_carries_what_its_markers_need(tmp_path):
    """Packed here for Python 3.10 with the parquet extra: pip, run by this Python, would leave out the wheels
    that only 3.10 needs (markers python_version < "3.11"); the kit must install and run on 3.10 offline."""
    other = _other_python()
    if other is None:
        pytest.skip("no CPython 3.10 with venv found (python3.10 on PATH or ~/.pyenv/versions/3.10.*)")
    exe, version = other
    bundle = tiny.make_bundle(tmp_path / "tinybundle")
    kit_path = tmp_path / "kit.tar"
    pack = subprocess.run(
        [
            sys.executable,
            "-m",
            "car_onnx",
            "pack",
            "-o",
            str(kit_path),
            "-b",
            str(bundle),
            "--python-version",
            version,
            "--platform",
            "manylinux_2_28_x86_64",
            "--extras",
            "parquet",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert pack.returncode == 0, pack.stderr[-3000:]
    info = json.loads(tarfile.open(kit_path).extractfile("car-onnx-kit/kit.json").read())
    assert info["requirement"] == "car-onnx[parquet]==0.1.0"
    assert all("cp311" not in rel for rel in info["files"]), "a wheel for this Python, not the target's"
    home = tmp_path / "home"
    home.mkdir()
    kit_dir = unpack(kit_path, tmp_path / "far")
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("CAR_ONNX_BUNDLE", "PYTHONPATH")},
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / "data"),
        "PYTHON": exe,
        "PIP_NO_INDEX": "1",
        "https_proxy": "http://127.0.0.1:9",
    }
    run = subprocess.run(
        [*_offline(), "sh", str(kit_dir / "install.sh")], capture_output=True, text=True, timeout=1200, env=env
    )
    assert run.returncode == 0, run.stderr[-3000:]
    venv = home / "data" / "car-onnx" / "venv"
    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(
            json.dumps({"instruction": f"explain {w}", "output": f"the {w} is water"}) + "\n" for w in tiny.WORDS[:20]
        )
    )
    theirs, ours = tmp_path / "theirs.parquet", tmp_path / "ours.parquet"
    args = ["select", str(data), "--n1", "3", "-q", "--output-format", "parquet"]
    run = subprocess.run(
        [*_offline(), str(venv / "bin" / "car-onnx"), *args, "-o", str(theirs)], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr
    subprocess.run([sys.executable, "-m", "car_onnx", *args, "-o", str(ours), "-b", str(bundle)], check=True)
    read = (
        "import sys, pyarrow.parquet as pq; "
        "print(sys.version_info[:2], pq.read_table(sys.argv[1])['instruction'].to_pylist())"
    )
    kit_side = subprocess.run([str(venv / "bin" / "python"), "-c", read, str(theirs)], capture_output=True, text=True)
    here = subprocess.run([sys.executable, "-c", read, str(ours)], capture_output=True, text=True, check=True)
    assert kit_side.stdout.startswith("(3, 10) "), kit_side.stderr
    assert kit_side.stdout.split(" ", 2)[2] == here.stdout.split(" ", 2)[2]
