"""IQS checkpoints to bundle scorers: tiny checkpoints in the released layout (RUN/checkpoints/X.ckpt beside
RUN/hparams.yaml) are built here, exported, and the runtime's scores compared with a PyTorch forward written
in this file (own sparsemax, layer norm, pooling and feed-forward on the state-dict tensors)."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
yaml = pytest.importorskip("yaml")
onnx = pytest.importorskip("onnx")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from car_onnx.errors import CarError  # noqa: E402
from car_onnx.runtime.bundle import Bundle  # noqa: E402
from car_onnx.runtime.graph import OnnxModel  # noqa: E402
from car_onnx.runtime.manifest import read_manifest, sha256_file, verify_files  # noqa: E402
from car_onnx.runtime.session import SessionConfig  # noqa: E402
from car_onnx_export import tiny  # noqa: E402
from car_onnx_export.cli import REFUSED_EXIT  # noqa: E402
from car_onnx_export.embedder import verification_texts  # noqa: E402
from car_onnx_export.errors import VariantsRefused  # noqa: E402
from car_onnx_export.iqs import export_scorer  # noqa: E402
from car_onnx_export.tiny import make_st_folder  # noqa: E402

HIDDEN, LAYERS, HEADS, POSITIONS = 32, 2, 4, 42  # 40 positions + XLM-R's pad offset of 2
MAX_LENGTH = POSITIONS - 4
WORDS = tiny.WORDS + ["how", "many", "apples", "does", "tom", "buy", "cost", "total", "story", "dragon", "king"]
QUIET = {"log": lambda s: None}
HPARAMS = {
    "pretrained_model": "xlm-roberta-large",
    "class_identifier": "instruction_metric",
    "batch_size": 4,
    "layer": "mix",
    "layer_transformation": "sparsemax",
    "layer_norm": False,
    "pool": "avg",
    "hidden_sizes": "24,16",
    "activations": "Tanh",
    "final_activation": None,
    "dropout": 0.1,
    "learning_rate": 3e-5,
    "encoder_model": "XLM-RoBERTa",
}


def xlmr_tokenizer(path: Path) -> int:
    """An XLM-R-style tokenizer.json: <s>=0, <pad>=1, </s>=2, <unk>=3, a word-level vocabulary, <s> ... </s>."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for w in WORDS + list(".,:;?!'\"()-0123456789"):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.enable_padding(pad_id=1, pad_token="<pad>", length=50)  # settings of its own, overridden by the runtime
    tok.save(str(path))
    return len(vocab) + 5  # a few unused rows, as real vocabularies have


def tiny_config(vocab: int) -> dict:
    return {
        "vocab_size": vocab,
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": 64,
        "max_position_embeddings": POSITIONS,
        "type_vocab_size": 1,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "layer_norm_eps": 1e-5,
        "model_type": "xlm-roberta",
    }


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The encoder's folder as --base: tokenizer.json and config.json."""
    root = tmp_path_factory.mktemp("base")
    vocab = xlmr_tokenizer(root / "tokenizer.json")
    (root / "config.json").write_text(json.dumps(tiny_config(vocab)))
    return root


def make_run(
    root: Path,
    base: Path,
    *,
    seed: int = 0,
    position_ids: bool = False,
    hidden: int = HIDDEN,
    heads: int = HEADS,
    checkpoint_extra: dict | None = None,
    **hparams,
) -> Path:
    """RUN/checkpoints/epoch=0.ckpt (a Lightning-like dict) and RUN/hparams.yaml with random weights."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    hp = {**HPARAMS, **hparams}
    torch.manual_seed(seed)
    config = XLMRobertaConfig(
        **{
            **tiny_config(json.loads((base / "config.json").read_text())["vocab_size"]),
            "hidden_size": hidden,
            "num_attention_heads": heads,
        }
    )
    encoder = XLMRobertaModel(config, add_pooling_layer=False)
    for name, p in encoder.named_parameters():  # wider than the 0.02 init, so every position's output
        if p.ndim == 2 and "embeddings" not in name:  # depends on its context (cls/default pooling)
            torch.nn.init.normal_(p, std=0.15)
    state = {f"encoder.model.{k}": v for k, v in encoder.state_dict().items()}
    if position_ids:  # old transformers versions saved this buffer
        state["encoder.model.embeddings.position_ids"] = torch.arange(POSITIONS).unsqueeze(0)
    g = torch.Generator().manual_seed(seed + 1)
    if hp["layer"] == "mix":
        for i in range(LAYERS + 1):
            state[f"layerwise_attention.scalar_parameters.{i}"] = torch.rand(1, generator=g) * 0.6
        state["layerwise_attention.gamma"] = torch.tensor([1.3])
        state["layerwise_attention.dropout_mask"] = torch.zeros(LAYERS + 1)
        state["layerwise_attention.dropout_fill"] = torch.full((LAYERS + 1,), -1e20)
    sizes = hp["hidden_sizes"]
    sizes = [int(s) for s in sizes.split(",")] if isinstance(sizes, str) else list(sizes)
    dims = [hidden, *sizes, 1]
    for j, (a, b) in enumerate(zip(dims, dims[1:])):
        state[f"estimator.ff.{3 * j}.weight"] = torch.randn(b, a, generator=g) / a**0.5 * 2
        state[f"estimator.ff.{3 * j}.bias"] = torch.randn(b, generator=g) * 0.1
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run / "hparams.yaml").write_text(yaml.safe_dump(hp))
    ckpt = run / "checkpoints" / "epoch=0.ckpt"
    torch.save(
        {
            "state_dict": state,
            "hyper_parameters": hp,
            "epoch": 0,
            "global_step": 0,
            "pytorch-lightning_version": "1.6.4",
            **(checkpoint_extra or {}),
        },
        ckpt,
    )
    return ckpt


# --- the reference, written independently of export/heads.py ---------------------------------------------


def own_sparsemax(z: np.ndarray) -> np.ndarray:
    zs = np.sort(z)[::-1]
    k = np.arange(1, len(z) + 1)
    cum = np.cumsum(zs)
    kz = k[1 + k * zs > cum].max()
    return np.maximum(z - (cum[kz - 1] - 1) / kz, 0)


def reference_scores(ckpt: Path, base: Path, texts: list[str], heads: int = HEADS) -> np.ndarray:
    """One text at a time (no padding at all), float64 head on transformers' hidden states."""
    from tokenizers import Tokenizer
    from transformers import XLMRobertaConfig, XLMRobertaModel

    hp = yaml.safe_load((ckpt.parent.parent / "hparams.yaml").read_text())
    state = torch.load(str(ckpt), weights_only=False)["state_dict"]
    enc = {
        k[len("encoder.model.") :]: v
        for k, v in state.items()
        if k.startswith("encoder.model.") and not k.endswith("position_ids")
    }
    cfg = json.loads((base / "config.json").read_text())
    cfg.update(hidden_size=enc["embeddings.word_embeddings.weight"].shape[1], num_attention_heads=heads)
    encoder = XLMRobertaModel(XLMRobertaConfig(**cfg), add_pooling_layer=False).eval()
    encoder.load_state_dict(enc)
    tok = Tokenizer.from_file(str(base / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_length=MAX_LENGTH)
    w = {k: v.double().numpy() for k, v in state.items() if not k.startswith("encoder.")}
    ff = sorted({int(k.split(".")[2]) for k in w if k.startswith("estimator.ff.")})
    act = {"Tanh": np.tanh, "ReLU": lambda x: np.maximum(x, 0), "Sigmoid": lambda x: 1 / (1 + np.exp(-x))}
    scores = []
    for text in texts:
        ids = tok.encode(text).ids
        assert len(ids) <= MAX_LENGTH and ids[0] == 0 and ids[-1] == 2
        with torch.no_grad():
            hs = [h[0].double().numpy() for h in encoder(torch.tensor([ids]), output_hidden_states=True).hidden_states]
        if hp["layer"] == "mix":
            if hp["layer_norm"]:
                hs = [(h - h.mean()) / np.sqrt(h.var() + 1e-12) for h in hs]
            s = np.array([w[f"layerwise_attention.scalar_parameters.{i}"][0] for i in range(len(hs))])
            mix = own_sparsemax(s) if hp["layer_transformation"] == "sparsemax" else np.exp(s) / np.exp(s).sum()
            mixed = w["layerwise_attention.gamma"][0] * sum(m * h for m, h in zip(mix, hs))
        else:
            mixed = hs[int(hp["layer"])]
        x = {"avg": mixed.mean(0), "max": mixed.max(0), "cls": mixed[0], "default": hs[-1][0]}[hp["pool"]]
        for n, j in enumerate(ff):
            x = w[f"estimator.ff.{j}.weight"] @ x + w[f"estimator.ff.{j}.bias"]
            if n < len(ff) - 1:
                x = act[hp["activations"]](x)
        if hp.get("final_activation"):
            x = act[hp["final_activation"]](x)
        scores.append(x[0])
    return np.array(scores)


def texts_mixed() -> list[str]:
    """Short texts and texts longer than the 38-token limit, in the selection template."""
    short = [("how many apples does tom buy?", "", "he buys 3."), ("hi", "", "the king"), ("a", "b", "c")]
    long = [(" ".join(WORDS[i : i + 25]), "the story", " ".join(WORDS[i + 5 : i + 45])) for i in range(0, 50, 9)]
    return [f"Instruction: {i} Input: {n} Response: {o}" for i, n, o in short + long] + ["dragon"]


def runtime_scores(spec, root: Path, texts: list[str], precision: str = "fp32", max_tokens: int = 100000):
    model = OnnxModel(spec, root, precision, SessionConfig(threads=2))
    return model.run(texts, ("score",), max_tokens=max_tokens)["score"]


CASES = {
    "sparsemax": {},
    "softmax": {"layer_transformation": "softmax"},
    "sparsemax-layernorm": {"layer_norm": True},
    "softmax-layernorm": {"layer_transformation": "softmax", "layer_norm": True},
    "pool-max": {"pool": "max", "hidden_sizes": [24, 16]},
    "pool-cls": {"pool": "cls"},
    "pool-default": {"pool": "default", "activations": "ReLU"},
    "layer-1": {"layer": 1, "final_activation": "Sigmoid"},
    "position-ids": {"position_ids": True, "hidden_sizes": "16"},
}


@pytest.mark.parametrize("case", list(CASES))
def test_scores_match_independent_forward(tmp_path, base, case):
    ckpt = make_run(tmp_path, base, seed=len(case), **CASES[case])
    spec = export_scorer(ckpt, tmp_path / "bundle", base=base, precisions=("fp32",), **QUIET)
    texts = texts_mixed()
    ref = reference_scores(ckpt, base, texts)
    assert np.std(ref) > 1e-3  # not a comparison between constants
    for budget in (40, 100000):  # one row per batch for the long ones / everything in one padded batch
        np.testing.assert_allclose(
            runtime_scores(spec, tmp_path / "bundle", texts, max_tokens=budget), ref, atol=1e-4, rtol=0
        )
    assert spec.variants["fp32"].fidelity["max_abs_score_error"] <= 1e-4


def test_config_inferred_from_the_weights(tmp_path, base):
    """Without config.json in --base: sizes from the tensors, 64-dim heads, XLM-R's pad id and layer norm eps."""
    only_tokenizer = tmp_path / "tok"
    only_tokenizer.mkdir()
    (only_tokenizer / "tokenizer.json").write_bytes((base / "tokenizer.json").read_bytes())
    ckpt = make_run(tmp_path, base, hidden=64, heads=1)
    spec = export_scorer(ckpt, tmp_path / "bundle", base=only_tokenizer, precisions=("fp32",), **QUIET)
    assert spec.info["encoder"]["config_from"] == "inferred from the weights"
    assert spec.info["encoder"]["num_attention_heads"] == 1 and spec.max_length == MAX_LENGTH
    texts = texts_mixed()
    np.testing.assert_allclose(
        runtime_scores(spec, tmp_path / "bundle", texts), reference_scores(ckpt, base, texts, heads=1), atol=1e-4
    )


def test_manifest_content(tmp_path, base):
    ckpt = make_run(tmp_path, base)
    export_scorer(ckpt, tmp_path / "bundle", base=base, precisions=("fp32",), **QUIET)
    manifest = read_manifest(tmp_path / "bundle")
    (spec,) = manifest.models
    assert spec.name == "iqs" and spec.roles == ("score",) and spec.outputs == {"score": "score"}
    assert spec.template.with_input == "Instruction: {instruction} Input: {input} Response: {output}"
    assert spec.template.without_input is None
    assert spec.max_length == MAX_LENGTH == 38 and spec.pad_id == 1
    assert spec.inputs == ("input_ids", "attention_mask")
    assert spec.info["checkpoint"] == "epoch=0.ckpt" and spec.info["checkpoint_sha256"] == sha256_file(ckpt)
    assert spec.info["hparams"]["layer_transformation"] == "sparsemax" and spec.info["hparams"]["pool"] == "avg"
    assert abs(sum(spec.info["layer_weights"]) - 1) < 1e-5
    assert set(manifest.files) == {"iqs/tokenizer.json", "iqs/model.fp32.onnx"}
    for rel, entry in manifest.files.items():
        path = tmp_path / "bundle" / rel
        assert sha256_file(path) == entry["sha256"] and path.stat().st_size == entry["bytes"]
    assert (tmp_path / "bundle" / "iqs" / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()


def test_int8_fidelity_is_recorded(tmp_path, base):
    ckpt = make_run(tmp_path, base, seed=3)
    spec = export_scorer(ckpt, tmp_path / "bundle", base=base, precisions=("fp32", "int8"), force=True, **QUIET)
    fidelity = read_manifest(tmp_path / "bundle").models[0].variants["int8"].fidelity
    assert fidelity == spec.variants["int8"].fidelity
    assert {"max_abs_score_error", "spearman", "top5pct_overlap", "texts", "gate", "forced"} <= set(fidelity)
    assert fidelity["forced"] == (fidelity["spearman"] < fidelity["gate"]["spearman"])
    assert fidelity["texts"] == len(verification_texts()) >= 100  # the committed check texts
    assert runtime_scores(spec, tmp_path / "bundle", texts_mixed(), precision="int8").shape == (10,)


def test_scorer_and_embedder_share_one_bundle(tmp_path, base):
    from car_onnx.io.records import Record
    from car_onnx_export.embedder import export_embedder

    ckpt = make_run(tmp_path, base)
    bundle_dir = tmp_path / "bundle"
    export_scorer(ckpt, bundle_dir, base=base, precisions=("fp32",), **QUIET)
    export_embedder(make_st_folder(tmp_path / "st"), bundle_dir, precisions=("fp32",), texts=texts_mixed(), **QUIET)
    manifest = read_manifest(bundle_dir)
    assert sorted((m.name, m.roles) for m in manifest.models) == [("embedder", ("embed",)), ("iqs", ("score",))]
    bundle = Bundle(bundle_dir, SessionConfig(threads=2))
    assert bundle.model("score") is not bundle.model("embed")
    records = [
        Record(0, "", {}, "how many apples does tom buy?", "", "he buys 3."),
        Record(1, "", {}, "hi", "x", "the king"),
    ]
    out = bundle.run(records, ("score", "embed"))
    assert out["score"].shape == (2,) and out["embed"].shape == (2, 32)
    np.testing.assert_allclose(
        out["score"],
        reference_scores(
            ckpt, base, [f"Instruction: {r.instruction} Input: {r.input} Response: {r.output}" for r in records]
        ),
        atol=1e-4,
    )


# --- refusals ------------------------------------------------------------------------------------------


def test_missing_hparams(tmp_path, base):
    ckpt = make_run(tmp_path, base)
    (ckpt.parent.parent / "hparams.yaml").unlink()
    with pytest.raises(CarError, match=r"epoch=0.ckpt: no hparams.yaml at .*run/hparams.yaml"):
        export_scorer(ckpt, tmp_path / "b", base=base, **QUIET)


def test_missing_hparams_key(tmp_path, base):
    ckpt = make_run(tmp_path, base)
    hp = yaml.safe_load((ckpt.parent.parent / "hparams.yaml").read_text())
    del hp["pool"]
    (ckpt.parent.parent / "hparams.yaml").write_text(yaml.safe_dump(hp))
    with pytest.raises(CarError, match=r"hparams.yaml: key 'pool' missing"):
        export_scorer(ckpt, tmp_path / "b", base=base, **QUIET)


def test_bad_hparams_value(tmp_path, base):
    ckpt = make_run(tmp_path, base, pool="mean")
    with pytest.raises(CarError, match=r"hparams.yaml: pool must be one of"):
        export_scorer(ckpt, tmp_path / "b", base=base, **QUIET)


def test_weights_only_refusal_and_unsafe_pickle(tmp_path, base):
    """Lightning often pickles an argparse.Namespace of hyper-parameters: refused unless trusted."""
    ckpt = make_run(tmp_path, base, checkpoint_extra={"hparams": argparse.Namespace(lr=1e-5)})
    with pytest.raises(
        CarError,
        match=r"epoch=0.ckpt: torch's weights-only loader refuses this file .*"
        r"if you trust the file, pass --unsafe-pickle",
    ):
        export_scorer(ckpt, tmp_path / "b", base=base, **QUIET)
    assert not (tmp_path / "b" / "manifest.json").exists()
    spec = export_scorer(ckpt, tmp_path / "b", base=base, precisions=("fp32",), unsafe_pickle=True, **QUIET)
    assert spec.variants["fp32"].fidelity["max_abs_score_error"] <= 1e-4


def test_unexpected_missing_and_misshapen_keys(tmp_path, base):
    ckpt = make_run(tmp_path, base)
    original = torch.load(str(ckpt), weights_only=True)
    cases = [
        (lambda s: s.__setitem__("classifier.weight", torch.zeros(2)), r"unexpected key 'classifier.weight'"),
        (lambda s: s.__setitem__("encoder.model.foo", torch.zeros(2)), r"unexpected key 'encoder.model.foo'"),
        (lambda s: s.pop("estimator.ff.6.bias"), r"key 'estimator.ff.6.bias' missing"),
        (
            lambda s: s.pop("encoder.model.encoder.layer.1.output.dense.weight"),
            r"key 'encoder.model.encoder.layer.1.output.dense.weight' missing",
        ),
        (
            lambda s: s.__setitem__("estimator.ff.3.weight", torch.zeros(16, 25)),
            r"key 'estimator.ff.3.weight' has shape \[16, 25\]",
        ),
        (lambda s: s.pop("layerwise_attention.scalar_parameters.2"), r"2 layerwise_attention.scalar_parameters"),
    ]
    for change, message in cases:
        state = dict(original["state_dict"])
        change(state)
        torch.save({**original, "state_dict": state}, ckpt)
        with pytest.raises(CarError, match=r"epoch=0.ckpt: .*" + message):
            export_scorer(ckpt, tmp_path / "b", base=base, **QUIET)


def test_tokenizer_is_required(tmp_path, base):
    ckpt = make_run(tmp_path, base)
    with pytest.raises(CarError, match=r"no tokenizer: --base DIR must hold the encoder's tokenizer.json"):
        export_scorer(ckpt, tmp_path / "b", **QUIET)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_bytes((base / "config.json").read_bytes())
    with pytest.raises(CarError, match=r"empty/tokenizer.json: missing; --base DIR must hold"):
        export_scorer(ckpt, tmp_path / "b", base=empty, **QUIET)


def test_not_a_checkpoint(tmp_path, base):
    ckpt = make_run(tmp_path, base)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(CarError, match=r"epoch=0.ckpt: not a readable PyTorch checkpoint"):
        export_scorer(ckpt, tmp_path / "b", base=base, **QUIET)


def test_cli_exports_a_two_model_bundle_that_select_uses(tmp_path, base, cli):
    """`car-onnx export scorer` + `export embedder` into one directory, then `select --bundle` on it: the scores
    written are the independent forward's."""
    ckpt = make_run(tmp_path, base, seed=5)
    bundle_dir = tmp_path / "bundle"
    rc, _, err, _ = cli(
        "export", "scorer", "--checkpoint", ckpt, "--base", base, "-o", bundle_dir, "--precision", "fp32"
    )
    assert rc == 0, err
    rc, _, err, _ = cli(
        "export", "embedder", "--model", make_st_folder(tmp_path / "st"), "-o", bundle_dir, "--precision", "fp32"
    )
    assert rc == 0, err
    rows = [{"instruction": f"how many {w} does tom buy", "input": "", "output": f"{w} {w} {w}"} for w in WORDS[:12]]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(rows))
    rc, _, err, modules = cli("select", data, "--bundle", bundle_dir, "--n1", "2", "-o", tmp_path / "out.json")
    assert rc == 0 and modules == [], err
    out = json.loads((tmp_path / "out.json").read_text())
    ref = reference_scores(
        ckpt, base, [f"Instruction: {r['instruction']} Input:  Response: {r['output']}" for r in rows]
    )
    assert [r["score"] for r in out[:2]] == pytest.approx(sorted(ref, reverse=True)[:2], abs=1e-4)


def test_cli_error_is_one_line(tmp_path, base, cli):
    ckpt = make_run(tmp_path, base)
    (ckpt.parent.parent / "hparams.yaml").unlink()
    rc, out, err, _ = cli("export", "scorer", "--checkpoint", ckpt, "--base", base, "-o", tmp_path / "b")
    assert (
        rc == 1
        and out == ""
        and err
        == f"car-onnx: error: {ckpt}: no hparams.yaml at {ckpt.parent.parent / 'hparams.yaml'} "
        "(the run folder of RUN/checkpoints/X.ckpt); it says how the head is built"
    )
    assert not (tmp_path / "b").exists()


# --- variants: a refused one leaves a valid bundle with the others (exit status 3); fp16 like int8 ------------

# An unreachable gate (Spearman and cosine are at most 1): int8 is built, measured and then refused.
PATCH_GATE = "from car_onnx_export import onnx_tools\nonnx_tools.DEFAULT_GATES['spearman'] = 1.01\n"


def run_cli(*args, patch: str = ""):
    """`car-onnx ARGS` in a subprocess, after `patch` ran in it; returns (exit code, stdout, stderr)."""
    code = patch + (
        "import sys\nfrom car_onnx.cli import main\nsys.argv = ['car-onnx', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    sys.exit(e.code or 0)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return p.returncode, p.stdout, p.stderr


def figures(fidelity: dict) -> str:
    return ", ".join(f"{k} {fidelity[k]}" for k in ("max_abs_score_error", "spearman", "top5pct_overlap", "texts"))


def test_refused_int8_keeps_fp32_in_a_valid_bundle(tmp_path, base):
    ckpt = make_run(tmp_path, base, seed=4)
    # The same export with --force: the int8 figures the refusal must report.
    rc, _, err = run_cli(
        "export", "scorer", "--checkpoint", ckpt, "--base", base, "-o", tmp_path / "forced", "--force", patch=PATCH_GATE
    )
    assert rc == 0, err
    forced = read_manifest(tmp_path / "forced").models[0].variants["int8"].fidelity
    assert forced["forced"] is True and forced["gate"]["spearman"] == 1.01

    bundle = tmp_path / "bundle"
    rc, out, err = run_cli("export", "scorer", "--checkpoint", ckpt, "--base", base, "-o", bundle, patch=PATCH_GATE)
    assert rc == REFUSED_EXIT == 3 and out.splitlines()[-1] == f"IQS scorer written to {bundle}"
    assert err.splitlines()[-1] == (
        f"car-onnx: error: {bundle}: model 'iqs' written with fp32; refused: int8: Spearman {forced['spearman']} "
        f"< 1.01 ({figures(forced)}); pass --force to keep it anyway"
    )
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest)
    assert list(manifest.models[0].variants) == ["fp32"]
    assert set(manifest.files) == {"iqs/tokenizer.json", "iqs/model.fp32.onnx"}
    assert sorted(p.name for p in (bundle / "iqs").iterdir()) == ["model.fp32.onnx", "tokenizer.json"]
    assert sha256_file(bundle / "iqs" / "model.fp32.onnx") == sha256_file(
        tmp_path / "forced" / "iqs" / "model.fp32.onnx"
    )
    assert Bundle(bundle, SessionConfig()).model("score").precision == "fp32"
    texts = texts_mixed()
    np.testing.assert_allclose(
        runtime_scores(manifest.models[0], bundle, texts), reference_scores(ckpt, base, texts), atol=1e-4
    )


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
        out.split()
    )


def test_steps_in_child_processes_write_the_same_bundle(tmp_path, base, monkeypatch):
    """A large model runs fusion, quantisation, conversion and checks each in its own process: forced here on the
    tiny model, the bundle is byte for byte the one the same export writes in one process."""
    from car_onnx_export import onnx_tools

    ckpt = make_run(tmp_path, base, seed=7)
    export_scorer(ckpt, tmp_path / "one", base=base, precisions=("fp32", "int8", "fp16"), force=True, **QUIET)
    spawned = []
    monkeypatch.setattr(onnx_tools, "EXTERNAL_DATA_BYTES", 0)
    real = onnx_tools.in_process
    monkeypatch.setattr(
        onnx_tools, "in_process", lambda big, fn, *a: spawned.append((big, fn.__name__)) or real(big, fn, *a)
    )
    export_scorer(ckpt, tmp_path / "many", base=base, precisions=("fp32", "int8", "fp16"), force=True, **QUIET)
    assert spawned == [
        (True, "optimize"),
        (True, "run_variant"),
        (True, "quantize_int8"),
        (True, "run_variant"),
        (True, "convert_fp16"),
        (True, "run_variant"),
    ]
    one, many = read_manifest(tmp_path / "one"), read_manifest(tmp_path / "many")
    assert one.files == many.files and one.models[0].variants == many.models[0].variants


def test_fusion_and_int8_leave_the_weights_in_their_files(tmp_path, base, monkeypatch):
    """A graph whose tensors are external files (torch's layout above 2 GB) is fused and quantised without loading
    them: the tensors a step does not change are copied one at a time as they are written, into the bytes
    onnxruntime's own optimize_model + save_model_to_file and quantize_dynamic write with every weight loaded."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from car_onnx_export import onnx_tools
    from car_onnx_export.iqs import load_scorer

    model, _, config = load_scorer(make_run(tmp_path, base, seed=9), base)
    example = {n: torch.full((2, 8), 5, dtype=torch.int64) for n in ("input_ids", "attention_mask")}
    (tmp_path / "raw").mkdir()
    onnx_tools.export_module(model, tmp_path / "raw" / "model.onnx", example, ["score"])
    (tmp_path / "split").mkdir()
    onnx.save_model(
        onnx.load(str(tmp_path / "raw" / "model.onnx")),
        str(tmp_path / "split" / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=False,
        size_threshold=1024,
    )
    assert len(list((tmp_path / "split").iterdir())) > 10
    monkeypatch.setattr(onnx_tools, "EXTERNAL_DATA_BYTES", 0)
    loaded = []
    real_load = onnx_tools.external_data_helper.load_external_data_for_tensor
    monkeypatch.setattr(
        onnx_tools.external_data_helper,
        "load_external_data_for_tensor",
        lambda t, d: loaded.append(t.name) or real_load(t, d),
    )
    (tmp_path / "ours").mkdir()
    stats = onnx_tools.optimize(tmp_path / "split" / "model.onnx", tmp_path / "ours" / "model.fp32.onnx", HEADS, HIDDEN)
    assert stats["Attention"] == LAYERS and len(loaded) == len(set(loaded))  # each read once, when written
    assert "encoder.embeddings.word_embeddings.weight" in loaded

    options = FusionOptions("bert")
    options.enable_skip_layer_norm = False
    theirs = optimize_model(
        str(tmp_path / "raw" / "model.onnx"),
        model_type="bert",
        num_heads=HEADS,
        hidden_size=HIDDEN,
        opt_level=0,
        optimization_options=options,
    )
    (tmp_path / "theirs").mkdir()
    theirs.save_model_to_file(str(tmp_path / "theirs" / "model.fp32.onnx"), use_external_data_format=True)
    for name in ("model.fp32.onnx", "model.fp32.onnx.data"):
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "theirs" / name).read_bytes(), name

    from onnxruntime.quantization import QuantType, onnx_quantizer, quantize_dynamic

    real_reload = onnx_quantizer.save_and_reload_model_with_shape_infer
    loaded.clear()
    onnx_tools.quantize_int8(
        tmp_path / "ours" / "model.fp32.onnx", tmp_path / "ours" / "model.int8.onnx", embeddings=True
    )
    assert onnx_quantizer.save_and_reload_model_with_shape_infer is real_reload
    assert "encoder.embeddings.word_embeddings.weight" not in loaded  # read by the quantiser, not into the graph
    assert len(loaded) == len(set(loaded)) > 0
    quantize_dynamic(
        str(tmp_path / "theirs" / "model.fp32.onnx"),
        str(tmp_path / "theirs" / "model.int8.onnx"),
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=True,
        op_types_to_quantize=["MatMul", "Attention", "Gather", "EmbedLayerNormalization"],
        nodes_to_exclude=onnx_tools.ffn_output_matmuls(tmp_path / "theirs" / "model.fp32.onnx"),
        use_external_data_format=True,
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    for name in ("model.int8.onnx", "model.int8.onnx.data"):
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "theirs" / name).read_bytes(), name


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
        json.loads((base / "config.json").read_text())["vocab_size"],
        32,
    ]
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
