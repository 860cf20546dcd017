"""Bundle loading, integrity checks, tokenization and batching, against the numpy reference of tiny.py."""

import json
import shutil

import numpy as np
import pytest

from car_onnx.errors import BundleError, UsageError
from car_onnx.runtime.bundle import Bundle, find_bundle
from car_onnx.runtime.manifest import Template, read_manifest
from car_onnx.runtime.session import SessionConfig, resolve
from car_onnx.runtime.tokenization import load_tokenizer, pad_batch, plan_batches, tokenize
from car_onnx_export import tiny

TEXTS = ["the answer is", "explain how water can be made"] + [
    " ".join(tiny.WORDS[i % 40 : i % 40 + n]) for i, n in enumerate([1, 3, 30, 7, 2, 11, 25, 5, 9, 4])
]


class Rec:
    def __init__(self, instruction, input="", output=""):
        self.instruction, self.input, self.output = instruction, input, output


def rendered(records):
    return [tiny.TEMPLATE.render(r.instruction, r.input, r.output) for r in records]


@pytest.fixture
def bundle_dir(tmp_path):
    return tiny.make_bundle(tmp_path / "bundle")


def test_scores_and_embeddings_match_reference(bundle_dir):
    records = [Rec(t, "", "give a word") for t in TEXTS]
    out = Bundle(bundle_dir, SessionConfig()).run(records, ("score", "embed"))
    scores, vectors = tiny.reference(rendered(records))
    np.testing.assert_allclose(out["score"], scores, atol=1e-6)
    np.testing.assert_allclose(out["embed"], vectors, atol=1e-6)
    assert out["score"].dtype == np.float32 and out["embed"].shape == (len(TEXTS), tiny.DIM)


@pytest.mark.parametrize("max_tokens", [1, 13, 40, 100000])
def test_result_does_not_depend_on_batching(bundle_dir, max_tokens):
    records = [Rec(t) for t in TEXTS]
    bundle = Bundle(bundle_dir, SessionConfig())
    one_by_one = [bundle.run([r], ("score",), max_tokens=1)["score"][0] for r in records]
    batched = bundle.run(records, ("score",), max_tokens=max_tokens)["score"]
    np.testing.assert_allclose(batched, one_by_one, atol=1e-6)


def test_threads_run_single_threaded_batches_side_by_side(bundle_dir):
    """On CPU, N threads run N single-threaded batches at once: any N gives the same bits, in input order, and
    the progress callback counts every record once."""
    records = [Rec(t) for t in TEXTS * 5]
    outs = []
    for threads in (1, 2, 5):
        bundle, seen = Bundle(bundle_dir, SessionConfig(threads=threads)), []
        model = bundle.model("score")
        assert (model.workers, model.session.get_session_options().intra_op_num_threads) == (threads, 1)
        outs.append(bundle.run(records, ("score", "embed"), max_tokens=40, progress=seen.append))
        assert sum(seen) == len(records)
    for out in outs[1:]:
        np.testing.assert_array_equal(out["score"], outs[0]["score"])
        np.testing.assert_array_equal(out["embed"], outs[0]["embed"])
    np.testing.assert_allclose(outs[0]["score"], tiny.reference(rendered(records))[0], atol=1e-6)


def test_int8_result_does_not_depend_on_batching(tmp_path):
    """Dynamic int8 quantises activations with one scale per batch, so the int8 graph itself scores a text
    differently beside others; the runtime runs int8 one text per batch, so every budget gives the same bits."""
    root = tiny.make_bundle(tmp_path / "b", precisions=("fp32", "int8"))
    model = Bundle(root, SessionConfig(precision="int8")).model("score")
    texts = rendered([Rec(t) for t in TEXTS])
    ids, mask = pad_batch(tokenize(model.tokenizer, texts).ids, 0)
    together = model.session.run(["score"], {"input_ids": ids, "attention_mask": mask})[0]
    alone = np.array(
        [
            model.session.run(["score"], {"input_ids": i[None, : m.sum()], "attention_mask": m[None, : m.sum()]})[0][0]
            for i, m in zip(ids, mask)
        ]
    )
    assert np.abs(together - alone).max() > 1e-3  # the graph is batch-dependent
    for budget in (1, 40, 100000):
        np.testing.assert_array_equal(model.run(texts, ("score",), max_tokens=budget)["score"], alone)


def test_split_bundle_runs_two_models(tmp_path):
    root = tiny.make_bundle(tmp_path / "b", split=True)
    records = [Rec(t) for t in TEXTS]
    bundle = Bundle(root, SessionConfig())
    assert bundle.model("score") is not bundle.model("embed")
    out = bundle.run(records, ("score", "embed"))
    np.testing.assert_allclose(out["score"], tiny.reference(rendered(records), seed=1)[0], atol=1e-6)
    np.testing.assert_allclose(out["embed"], tiny.reference(rendered(records), seed=2)[1], atol=1e-6)


def test_plan_batches_respects_budget_and_sorts():
    lengths = np.array([5, 1, 9, 3, 3, 12, 2, 7])
    batches = plan_batches(lengths, max_tokens=12)
    assert sorted(np.concatenate(batches).tolist()) == list(range(8))
    for b in batches:
        assert len(b) * lengths[b].max() <= 12 or len(b) == 1
    flat = np.concatenate(batches)
    assert lengths[flat].tolist() == sorted(lengths.tolist())
    assert [len(b) for b in plan_batches(lengths, 10**6, max_batch=3)] == [3, 3, 2]


def test_pad_batch_right_pads():
    ids, mask = pad_batch([np.array([5, 6, 7]), np.array([8])], pad_id=1)
    assert ids.tolist() == [[5, 6, 7], [8, 1, 1]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_tokenizer_settings_of_the_file_are_overridden(tmp_path):
    tiny.make_tokenizer(tmp_path / "t.json")  # the file itself pads to 20 and truncates at 30
    tok = load_tokenizer(tmp_path / "t.json", max_length=5)
    tokens = tokenize(tok, ["the", " ".join(tiny.WORDS[:40])])
    assert tokens.lengths.tolist() == [3, 5]
    assert tokens.ids[0].tolist() == [2, tiny.vocab()["the"], 3]


def test_template_without_input():
    t = Template("I: {instruction} In: {input} R: {output}", "I: {instruction} R: {output}")
    assert t.render("a", "", "c") == "I: a R: c"
    assert t.render("a", "b", "c") == "I: a In: b R: c"
    assert Template("I: {instruction} In: {input} R: {output}").render("a", "", "c") == "I: a In:  R: c"
    with pytest.raises(BundleError, match="not a valid template"):
        Template("{instruction} {nope}")


def test_tampered_file_is_refused(bundle_dir):
    graph = bundle_dir / "joint" / "model.fp32.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01  # flip one bit
    graph.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.fp32\.onnx: sha256 mismatch .*re-export or re-copy it$"):
        Bundle(bundle_dir, SessionConfig(precision="fp32")).model("score")


def _edit_manifest(root, fn):
    m = json.loads((root / "manifest.json").read_text())
    fn(m)
    (root / "manifest.json").write_text(json.dumps(m))


def test_path_leaving_the_bundle_is_refused(bundle_dir):
    def escape(m):
        m["files"]["../outside.onnx"] = m["files"].pop("joint/model.fp32.onnx")
        m["models"][0]["variants"]["fp32"]["graph"] = "../outside.onnx"

    _edit_manifest(bundle_dir, escape)
    with pytest.raises(BundleError, match=r"file path '\.\./outside\.onnx' leaves the bundle directory"):
        read_manifest(bundle_dir)


def test_unknown_version_and_missing_file(bundle_dir):
    (bundle_dir / "joint" / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"file 'joint/tokenizer\.json' named in the manifest is missing"):
        Bundle(bundle_dir, SessionConfig()).model("embed")
    _edit_manifest(bundle_dir, lambda m: m.update(version=99))
    with pytest.raises(BundleError, match=r"unknown manifest version 99; this car-onnx reads version 1"):
        read_manifest(bundle_dir)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match=r"not a bundle \(no manifest\.json\)"):
        read_manifest(tmp_path)


def test_missing_role(tmp_path):
    root = tiny.make_bundle(tmp_path / "b", split=True)
    _edit_manifest(root, lambda m: m["models"].pop(0))
    with pytest.raises(BundleError, match=r"the bundle has no model for role 'score'"):
        Bundle(root, SessionConfig()).model("score")


def test_precision_choice(tmp_path):
    root = tiny.make_bundle(tmp_path / "b", precisions=("fp32", "int8"))
    assert Bundle(root, SessionConfig()).model("score").precision == "int8"  # CPU default
    assert Bundle(root, SessionConfig(precision="fp32")).model("score").precision == "fp32"
    assert SessionConfig(device="cuda").pick_precision(["fp32", "fp16"], "m") == "fp16"
    with pytest.raises(UsageError, match=r"^precision fp16: model 'joint' has no such variant \(it has: fp32, int8\)$"):
        Bundle(root, SessionConfig(precision="fp16")).model("score")


def test_device_resolution():
    assert resolve("auto").device == "cpu"  # no CUDA provider on the CPU build
    with pytest.raises(UsageError) as info:  # this machine has the CPU build only
        resolve("cuda")
    assert str(info.value) == (
        "device cuda: onnxruntime has no CUDAExecutionProvider here (installed: onnxruntime); replace it with the "
        "GPU build: `pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'onnxruntime-gpu>=1.19'`; or use "
        "device cpu"
    )
    with pytest.raises(UsageError, match=r"^device must be one of cpu, cuda, auto, got 'tpu'"):
        resolve("tpu")
    with pytest.raises(UsageError, match=r"^threads must be an integer >= 1, got 0$"):
        resolve("cpu", threads=0)
    with pytest.raises(UsageError, match=r"^precision must be one of fp32, int8, fp16, got 'int4'$"):
        resolve("cpu", precision="int4")


def test_cuda_message_names_a_mixed_install(monkeypatch):
    """Both builds installed and the CPU one's files on top: the message says so, with the same fix."""
    from car_onnx.runtime import session

    monkeypatch.setattr(session, "onnxruntime_builds", lambda: ["onnxruntime", "onnxruntime-gpu"])
    monkeypatch.setattr(session, "available_providers", lambda: ["CPUExecutionProvider"])
    assert session.cuda_problem() == (
        "onnxruntime has no CUDAExecutionProvider here: onnxruntime and onnxruntime-gpu are both installed and "
        f"overwrite each other's `onnxruntime` module; keep only the GPU build: `{session.GPU_INSTALL}`"
    )
    assert resolve("auto").device == "cpu"
    monkeypatch.setattr(session, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(session, "preload_cuda_libraries", lambda: None)
    assert session.cuda_problem() is None and resolve("auto").device == "cuda"


def test_default_bundle_location(tmp_path, monkeypatch):
    monkeypatch.delenv("CAR_ONNX_BUNDLE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    with pytest.raises(
        BundleError, match=r"no default bundle at .*car-onnx/default; build it with `car-onnx export default`"
    ):
        find_bundle(None)
    shutil.copytree(tiny.make_bundle(tmp_path / "b"), tmp_path / "car-onnx" / "default")
    assert find_bundle(None) == tmp_path / "car-onnx" / "default"
    monkeypatch.setenv("CAR_ONNX_BUNDLE", str(tmp_path / "b"))
    assert find_bundle(None) == tmp_path / "b"


def test_cuda_settings(bundle_dir, monkeypatch):
    """On CUDA: onnxruntime's cuDNN attention stays off (it ran 9.7-14x slower on an H200 with our varied batch
    shapes) while its other kernels stay on, and batches default to a larger token budget; CPU keeps its own."""
    from car_onnx import load
    from car_onnx.runtime import session
    from car_onnx.runtime.tokenization import CUDA_MAX_TOKENS, DEFAULT_MAX_TOKENS

    (cuda, options), cpu = SessionConfig(device="cuda").providers()
    kernels = int(options["sdpa_kernel"])
    assert (cuda, cpu) == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert kernels & 8 == 0 and kernels & (1 | 2 | 4 | 16) == 1 | 2 | 4 | 16
    assert SessionConfig(device="cpu").providers() == ["CPUExecutionProvider"]
    assert load(bundle_dir, device="cpu").max_tokens == DEFAULT_MAX_TOKENS == 2048
    monkeypatch.setattr(session, "available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(session, "preload_cuda_libraries", lambda: None)
    assert load(bundle_dir, device="cuda").max_tokens == CUDA_MAX_TOKENS == 32768
    assert load(bundle_dir, device="cuda", max_tokens=64).max_tokens == 64
