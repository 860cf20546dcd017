"""The GPU check's kit: what a bare CUDA machine without network needs to run `benchmarks.gpu`, packed here into
parts small enough for one transfer each, checked and unpacked there by benchmarks/gpu_device.sh.

    python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_28_x86_64 -d /tmp onnxruntime-gpu==1.31.1
    python -m benchmarks.gpu_kit pack --wheel /tmp/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl \\
        --default BUNDLE --iqs IQS_BUNDLE [--out .gpu] [--part-mib 58]
    # there, once every .gpu/part.NN is copied into one folder KIT (with .gpu/SHA256SUMS in the repository copy):
    bash benchmarks/gpu_device.sh KIT OUT

The kit holds the onnxruntime-gpu wheel (as downloaded, sha256 recorded), the default bundle's fp32 graph (fp16 is
made there with the export's own conversion), real records (the machine has no ../shared), and the full-size IQS
bundle as a skeleton: its graph without weights plus, per large weight, shape, dtype, mean and standard deviation.
`unpack-iqs` regenerates the weights from those (seeded normal draws; its weights are random anyway, as the export
benchmark builds them), so 2.2 GB travels as a few MB. `--default` is the fp32 default bundle (`car-onnx export
default --precision fp32`); `--iqs` a full-size IQS bundle with fp32 (`python -m benchmarks.gpu --build-iqs DIR`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import shutil
import tarfile
import zlib
from pathlib import Path

import numpy as np

from .common import ROOT, real_records

SMALL = 4096  # weights with at most this many values travel as they are (biases, layer norms, shapes)
RECIPE = "weights.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def skeleton(src: Path, dst: Path, small: int = SMALL) -> None:
    """The graph `src` (external data beside it) without its float weights of more than `small` values, as
    dst/model.onnx, and what regenerates them as dst/weights.json."""
    import onnx
    from onnx import external_data_helper, numpy_helper

    model = onnx.load(str(src), load_external_data=False)
    recipe = []
    for tensor in model.graph.initializer:
        if external_data_helper.uses_external_data(tensor):
            external_data_helper.load_external_data_for_tensor(tensor, str(src.parent))
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
        array = numpy_helper.to_array(tensor)
        if array.size <= small or array.dtype.kind != "f":
            continue
        recipe.append(
            {
                "name": tensor.name,
                "dtype": str(array.dtype),
                "shape": list(array.shape),
                "mean": float(array.mean(dtype=np.float64)),
                "std": float(array.std(dtype=np.float64)),
            }
        )
        tensor.ClearField("raw_data")
    dst.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(dst / "model.onnx"))
    (dst / RECIPE).write_text(json.dumps(recipe, indent=1) + "\n")


def regenerate(src: Path, dst: Path) -> None:
    """The skeleton in `src` as a graph at `dst` (external data beside it) with its large weights drawn again:
    normal(mean, std) per tensor, seeded by the tensor's name."""
    import onnx

    from car_onnx_export.onnx_tools import save_onnx

    model = onnx.load(str(src / "model.onnx"))
    recipe = {r["name"]: r for r in json.loads((src / RECIPE).read_text())}
    for tensor in model.graph.initializer:
        if (r := recipe.get(tensor.name)) is not None:
            rng = np.random.default_rng(zlib.crc32(tensor.name.encode()))
            values = rng.standard_normal(r["shape"], dtype=np.float32) * np.float32(r["std"]) + np.float32(r["mean"])
            tensor.raw_data = values.astype(r["dtype"]).tobytes()
    save_onnx(model, dst, external=True)


def fp32_models(bundle: Path) -> list:
    """The models of `bundle` with their fp32 variants alone."""
    from car_onnx.runtime.manifest import read_manifest

    return [dataclasses.replace(m, variants={"fp32": m.variants["fp32"]}) for m in read_manifest(bundle).models]


def copy_fp32(bundle: Path, dst: Path, graphs: bool = True) -> None:
    """`bundle` with only its fp32 variants, as a bundle in `dst` (`graphs=False`: without the graphs, and with the
    source's manifest, for `unpack_skeletons` to finish)."""
    from car_onnx.runtime.manifest import write_manifest

    models = fp32_models(bundle)
    for model in models:
        for rel in model.files() if graphs else [model.tokenizer]:
            for f in (bundle / rel, bundle / (rel + ".data")):
                if f.is_file():
                    (dst / f.relative_to(bundle)).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, dst / f.relative_to(bundle))
    if graphs:
        write_manifest(dst, models, "benchmarks.gpu_kit (fp32 of the default bundle)")
    else:
        shutil.copy2(bundle / "manifest.json", dst / "manifest.json")


def pack_skeletons(bundle: Path, dst: Path, small: int = SMALL) -> None:
    """`bundle`'s fp32 models as skeletons in `dst` (its manifest and tokenizers, a skeleton per graph)."""
    copy_fp32(bundle, dst, graphs=False)
    for model in fp32_models(bundle):
        skeleton(bundle / model.variants["fp32"].graph, dst / "skeleton" / model.name, small)


def unpack_skeletons(kit: Path, dst: Path) -> None:
    """The skeletons of `pack_skeletons` as a runnable bundle in `dst`, weights drawn again."""
    from car_onnx.runtime.manifest import write_manifest

    models = fp32_models(kit)
    shutil.copytree(kit, dst, ignore=shutil.ignore_patterns("skeleton", "manifest.json"), dirs_exist_ok=True)
    for model in models:
        regenerate(kit / "skeleton" / model.name, dst / model.variants["fp32"].graph)
    write_manifest(dst, models, "benchmarks.gpu_kit (weights drawn again)")


def pack(wheel: Path, default: Path, iqs: Path, out: Path, part_mib: float, records: int) -> list[Path]:
    stage = out / "kit"
    shutil.rmtree(out, ignore_errors=True)
    (stage / "wheels").mkdir(parents=True)
    shutil.copy2(wheel, stage / "wheels" / wheel.name)
    copy_fp32(default, stage / "default")
    pack_skeletons(iqs, stage / "iqs")
    with open(stage / "records.jsonl", "w", encoding="utf-8") as f:
        for r in real_records(records, seed=4):
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    files = sorted(p for p in stage.rglob("*") if p.is_file())
    (stage / "SHA256SUMS").write_text("".join(f"{sha256(p)}  {p.relative_to(stage)}\n" for p in files))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(stage, arcname="kit")
    shutil.rmtree(stage)
    data, size = buffer.getvalue(), int(part_mib * 2**20)
    parts = []
    for i in range(0, len(data), size):
        parts.append(out / f"part.{len(parts) + 1:02d}")
        parts[-1].write_bytes(data[i : i + size])
    (out / "SHA256SUMS").write_text("".join(f"{sha256(p)}  {p.name}\n" for p in parts))
    return parts


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="write the kit's parts (here)")
    p.add_argument("--wheel", type=Path, required=True, help="the onnxruntime-gpu wheel for the GPU machine")
    p.add_argument("--default", type=Path, required=True, help="the default bundle, with fp32")
    p.add_argument("--iqs", type=Path, required=True, help="a full-size IQS bundle, with fp32")
    p.add_argument("--out", type=Path, default=ROOT / ".gpu")
    p.add_argument("--part-mib", type=float, default=58.0, help="size of each part (one transfer each)")
    p.add_argument("--records", type=int, default=4000)
    u = sub.add_parser("unpack-iqs", help="the IQS skeletons as a runnable bundle (there)")
    u.add_argument("kit_iqs", type=Path)
    u.add_argument("dst", type=Path)
    args = ap.parse_args(argv)
    if args.command == "pack":
        parts = pack(args.wheel, args.default, args.iqs, args.out, args.part_mib, args.records)
        for part in parts:
            print(f"{part} {part.stat().st_size / 2**20:.1f} MiB")
    else:
        unpack_skeletons(args.kit_iqs, args.dst)


if __name__ == "__main__":
    main()
