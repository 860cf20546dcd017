"""Offline install kit: size of the kit for the default bundle (wheels + bundle), time to pack it (`car-onnx pack`,
pip's cache and configuration as this machine has them) and to install it with `install.sh` without network,
against the connected alternative in the same run: a fresh venv with `pip install .` (the runtime alone, from the
index) and the bundle copied.

    python -m benchmarks.kit [--quick] [--work DIR]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from car_onnx.runtime.bundle import default_bundle_dir

from .common import ROOT, car_onnx, section_main


def _timed(cmd: list[str], env: dict | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return round(time.perf_counter() - start, 1)


def _mb(folder: Path) -> float:
    return round(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20, 1)


def run(work: Path, quick: bool = False) -> dict:
    bundle = default_bundle_dir()
    if not (bundle / "manifest.json").is_file():
        raise SystemExit(f"the kit benchmark needs the default bundle at {bundle}: car-onnx export default")
    kit = work / "kit.tar"
    pack_s = _timed([car_onnx(), "pack", "-o", str(kit), "--force"])
    info = json.loads(tarfile.open(kit).extractfile("car-onnx-kit/kit.json").read())
    far = work / "kit-far"
    shutil.rmtree(far, ignore_errors=True)
    far.mkdir()
    with tarfile.open(kit) as tar:
        tar.extractall(far, filter="data")
    # No network for install.sh: a new network namespace where this machine allows one, and pip's index off.
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True)
    offline = ["unshare", "--net"] if probe.returncode == 0 else []
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("CAR_ONNX_BUNDLE", "PYTHONPATH")},
        "HOME": str(far),
        "XDG_DATA_HOME": str(far / "data"),
        "PIP_NO_INDEX": "1",
        "https_proxy": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
    }
    install_s = _timed([*offline, "sh", str(far / "car-onnx-kit" / "install.sh")], env)
    venv_mb = _mb(far / "data" / "car-onnx" / "venv")

    online = work / "kit-online-venv"
    shutil.rmtree(online, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(online)], check=True)
    subprocess.run(
        [str(online / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT)],
        check=True,
    )
    shutil.copytree(bundle, online / "bundle")
    online_s = round(time.perf_counter() - start, 1)
    shutil.rmtree(online)
    shutil.rmtree(far)
    return {
        "kit": {
            "wheels": sum(rel.startswith("wheels/") for rel in info["files"]),
            "wheels_mb": info["wheels_mb"],
            "bundle_mb": info["bundles_mb"],
            "archive_mb": round(kit.stat().st_size / 2**20, 1),
            "requirement": info["requirement"],
            "target": f"Python {info['target']['python_version']}, {info['target']['platform']}",
        },
        "seconds": {
            "car-onnx pack (pip cache warm)": pack_s,
            "install.sh, no network": install_s,
            "online: venv + pip install . from the index + copy the bundle": online_s,
        },
        "installed_venv_mb": venv_mb,
        "install_sh_network": "none (unshare --net)" if offline else "proxy 127.0.0.1:9",
    }


if __name__ == "__main__":
    section_main("kit", run, __doc__)
