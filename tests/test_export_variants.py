"""Variants of an export: a variant refused by its gate leaves a valid bundle with the others (exit status 3 from
the CLI, the refused one and its figures on stderr); fp16 is built, checked and recorded like int8; a large model's
steps run in child processes (same bytes); large embedding tables go int8 where the gate allows."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("yaml")

from car_onnx.bundle import Bundle  # noqa: E402
from car_onnx.manifest import read_manifest, sha256_file, verify_files  # noqa: E402
from car_onnx.session import SessionConfig  # noqa: E402
from car_onnx_export.cli import REFUSED_EXIT  # noqa: E402
from car_onnx_export.errors import VariantsRefused  # noqa: E402
from car_onnx_export.iqs import export_scorer  # noqa: E402
from tests.test_export_iqs import QUIET, base, make_run, reference_scores, runtime_scores, texts_mixed  # noqa: E402,F401

# An unreachable gate (Spearman and cosine are at most 1): int8 is built, measured and then refused.
PATCH_GATE = "from car_onnx_export import onnx_tools\nonnx_tools.DEFAULT_GATES['spearman'] = 1.01\n"


def run_cli(*args, patch: str = ""):
    """`car-onnx ARGS` in a subprocess, after `patch` ran in it; returns (exit code, stdout, stderr)."""
    code = patch + ("import sys\nfrom car_onnx.cli import main\nsys.argv = ['car-onnx', *sys.argv[1:]]\n"
                    "try:\n    main()\nexcept SystemExit as e:\n    sys.exit(e.code or 0)\n")
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return p.returncode, p.stdout, p.stderr


def figures(fidelity: dict) -> str:
    return ", ".join(f"{k} {fidelity[k]}" for k in ("max_abs_score_error", "spearman", "top5pct_overlap", "texts"))


def test_refused_int8_keeps_fp32_in_a_valid_bundle(tmp_path, base):
    ckpt = make_run(tmp_path, base, seed=4)
    # The same export with --force: the int8 figures the refusal must report.
    rc, _, err = run_cli("export", "scorer", "--checkpoint", ckpt, "--base", base, "-o", tmp_path / "forced",
                         "--force", patch=PATCH_GATE)
    assert rc == 0, err
    forced = read_manifest(tmp_path / "forced").models[0].variants["int8"].fidelity
    assert forced["forced"] is True and forced["gate"]["spearman"] == 1.01

    bundle = tmp_path / "bundle"
    rc, out, err = run_cli("export", "scorer", "--checkpoint", ckpt, "--base", base, "-o", bundle, patch=PATCH_GATE)
    assert rc == REFUSED_EXIT == 3 and out.splitlines()[-1] == f"IQS scorer written to {bundle}"
    assert err.splitlines()[-1] == (
        f"car-onnx: error: {bundle}: model 'iqs' written with fp32; refused: int8: Spearman {forced['spearman']} "
        f"< 1.01 ({figures(forced)}); pass --force to keep it anyway")
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest)
    assert list(manifest.models[0].variants) == ["fp32"]
    assert set(manifest.files) == {"iqs/tokenizer.json", "iqs/model.fp32.onnx"}
    assert sorted(p.name for p in (bundle / "iqs").iterdir()) == ["model.fp32.onnx", "tokenizer.json"]
    assert sha256_file(bundle / "iqs" / "model.fp32.onnx") == sha256_file(tmp_path / "forced" / "iqs" / "model.fp32.onnx")
    assert Bundle(bundle, SessionConfig(), ("score",)).models["score"].precision == "fp32"
    texts = texts_mixed()
    np.testing.assert_allclose(runtime_scores(manifest.models[0], bundle, texts), reference_scores(ckpt, base, texts),
                               atol=1e-4)


def test_refusal_through_the_library(tmp_path, base, monkeypatch):
    """export_scorer raises VariantsRefused after writing; asked only for int8, the checked fp32 is kept."""
    from car_onnx_export import onnx_tools

    monkeypatch.setitem(onnx_tools.DEFAULT_GATES, "spearman", 1.01)
    ckpt = make_run(tmp_path, base, seed=4)
    with pytest.raises(VariantsRefused) as info:
        export_scorer(ckpt, tmp_path / "bundle", base=base, precisions=("int8",), **QUIET)
    err = info.value
    assert err.kept == ["fp32"] and [r.precision for r in err.refused] == ["int8"]
    assert err.refused[0].failed == [f"int8: Spearman {err.refused[0].metrics['spearman']} < 1.01"]
    assert list(read_manifest(tmp_path / "bundle").models[0].variants) == ["fp32"]
    assert not (tmp_path / "bundle" / "iqs" / "model.int8.onnx").exists()


def test_fp16_variant_of_a_scorer(tmp_path, base):
    """fp16 on the tiny IQS: measured against PyTorch at export, recorded, and its scores close to the
    independent forward."""
    ckpt = make_run(tmp_path, base, seed=6)
    spec = export_scorer(ckpt, tmp_path / "bundle", base=base, precisions=("fp32", "fp16"), **QUIET)
    fidelity = read_manifest(tmp_path / "bundle").models[0].variants["fp16"].fidelity
    assert fidelity == spec.variants["fp16"].fidelity and fidelity["forced"] is False
    assert fidelity["spearman"] >= 0.99 and fidelity["max_abs_score_error"] < 0.05
    texts = texts_mixed()
    got = runtime_scores(spec, tmp_path / "bundle", texts, precision="fp16")
    ref = reference_scores(ckpt, base, texts)
    assert got.dtype == np.float32 and np.abs(got - ref).max() < 0.05 and np.abs(got - ref).max() > 0
    weights = onnx.load(str(tmp_path / "bundle" / "iqs" / "model.fp16.onnx")).graph.initializer
    assert sum(t.data_type == onnx.TensorProto.FLOAT16 for t in weights) > len(weights) // 2


def test_default_export_builds_fp16():
    rc, out, err = run_cli("export", "default", "--help")
    assert rc == 0, err
    assert "[default: fp32,int8,fp16]" in out and "Exit status 3: a variant missed its fidelity gate" in " ".join(
        out.split())


def test_steps_in_child_processes_write_the_same_bundle(tmp_path, base, monkeypatch):
    """A large model runs fusion, quantisation, conversion and checks each in its own process: forced here on the
    tiny model, the bundle is byte for byte the one the same export writes in one process."""
    from car_onnx_export import onnx_tools

    ckpt = make_run(tmp_path, base, seed=7)
    export_scorer(ckpt, tmp_path / "one", base=base, precisions=("fp32", "int8", "fp16"), force=True, **QUIET)
    spawned = []
    monkeypatch.setattr(onnx_tools, "EXTERNAL_DATA_BYTES", 0)
    real = onnx_tools.in_process
    monkeypatch.setattr(onnx_tools, "in_process", lambda big, fn, *a: spawned.append((big, fn.__name__)) or
                        real(big, fn, *a))
    export_scorer(ckpt, tmp_path / "many", base=base, precisions=("fp32", "int8", "fp16"), force=True, **QUIET)
    assert spawned == [(True, "optimize"), (True, "run_variant"), (True, "quantize_int8"), (True, "run_variant"),
                       (True, "convert_fp16"), (True, "run_variant")]
    one, many = read_manifest(tmp_path / "one"), read_manifest(tmp_path / "many")
    assert one.files == many.files and one.models[0].variants == many.models[0].variants


def test_embedding_tables_int8_where_the_gate_allows(tmp_path, base, monkeypatch):
    """Above EMBEDDING_INT8_BYTES the embedding tables are quantised too (uint8 word table in the graph, recorded
    in the manifest); when that misses the gate, int8 is tried again with them fp32 before being refused."""
    from car_onnx_export import onnx_tools

    monkeypatch.setattr(onnx_tools, "EMBEDDING_INT8_BYTES", 0)
    ckpt = make_run(tmp_path, base, seed=8)
    spec = export_scorer(ckpt, tmp_path / "bundle", base=base, precisions=("fp32", "int8"), **QUIET)
    fidelity = spec.variants["int8"].fidelity
    assert fidelity["embeddings"] == "int8" and fidelity["forced"] is False and fidelity["spearman"] >= 0.99
    tables = {t.name: t for t in onnx.load(str(tmp_path / "bundle" / "iqs" / "model.int8.onnx")).graph.initializer}
    word = tables["encoder.embeddings.word_embeddings.weight_quantized"]
    assert word.data_type == onnx.TensorProto.UINT8 and list(word.dims) == [
        json.loads((base / "config.json").read_text())["vocab_size"], 32]
    assert "encoder.embeddings.word_embeddings.weight" not in tables
    texts = texts_mixed()
    got = runtime_scores(spec, tmp_path / "bundle", texts, precision="int8")
    assert np.abs(got - reference_scores(ckpt, base, texts)).max() < 0.2

    monkeypatch.setitem(onnx_tools.DEFAULT_GATES, "spearman", 1.01)
    lines = []
    with pytest.raises(VariantsRefused) as info:
        export_scorer(ckpt, tmp_path / "refused", base=base, precisions=("fp32", "int8"), log=lines.append)
    tried = [line.split(" against")[0] for line in lines if " against PyTorch fp32" in line]
    assert tried == ["iqs: int8 (embeddings int8)", "iqs: int8 (embeddings fp32)"]
    last = [line for line in lines if " against PyTorch fp32" in line][-1]
    assert info.value.refused[0].metrics["spearman"] == float(last.split("'spearman': ")[1].split(",")[0])
