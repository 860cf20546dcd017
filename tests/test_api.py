"""The Python API: every input kind gives what `car-onnx score` / `embed` / `select` give on the same records
written to a file; pickling, process pools, datasets.map and threads; errors before any model runs."""

import json
import multiprocessing
import pickle
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import car_onnx
from car_onnx_export import tiny

RECORDS = [
    {
        "instruction": f"explain the {w} of water",
        "input": "" if i % 3 else f"what {w} is",
        "output": f"the {w} is {v} and {w}",
        "id": i,
    }
    for i, (w, v) in enumerate(zip(tiny.WORDS[:40], reversed(tiny.WORDS[40:80])))
]
CHATS = [
    {
        "messages": [
            {"role": "system", "content": r["input"]},
            {"role": "user", "content": r["instruction"]},
            {"role": "assistant", "content": r["output"]},
        ],
        "id": r["id"],
    }
    for r in RECORDS
]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny.make_bundle(tmp_path_factory.mktemp("api") / "bundle")


@pytest.fixture(scope="module")
def cli_outputs(bundle, tmp_path_factory, cli):
    """What the CLI writes for RECORDS and CHATS: scores, embeddings, and the selection (ids, clusters)."""
    tmp = tmp_path_factory.mktemp("cli")
    out = {}
    for name, rows in (("records", RECORDS), ("chats", CHATS)):
        data = tmp / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        for command, target in (
            ("score", f"{name}.s.jsonl"),
            ("embed", f"{name}.npy"),
            ("select", f"{name}.sel.jsonl"),
        ):
            extra = ("--n1", "5") if command == "select" else ()
            rc, _, err, _ = cli(command, data, "-o", tmp / target, "-b", bundle, "-q", *extra)
            assert rc == 0, err
        read = lambda p: [json.loads(line) for line in (tmp / p).read_text().splitlines()]  # noqa: E731
        out[name] = {
            "score": np.array([r["score"] for r in read(f"{name}.s.jsonl")], dtype=np.float32),
            "embed": np.load(tmp / f"{name}.npy"),
            "selected": [(r["id"], r["cluster"]) for r in read(f"{name}.sel.jsonl")],
        }
    return out


def containers():
    import pandas as pd
    from datasets import Dataset

    return {
        "list": lambda: list(RECORDS),
        "generator": lambda: (r for r in RECORDS),
        "DataFrame": lambda: pd.DataFrame(RECORDS),
        "Dataset": lambda: Dataset.from_list(RECORDS),
        "columns": lambda: {k: [r[k] for r in RECORDS] for k in RECORDS[0]},
    }


@pytest.mark.parametrize("kind", ["list", "generator", "DataFrame", "Dataset", "columns", "messages"])
def test_every_input_kind_gives_the_cli_numbers(bundle, cli_outputs, kind):
    pytest.importorskip("pandas")
    pytest.importorskip("datasets")
    model = car_onnx.load(bundle)
    make = (lambda: list(CHATS)) if kind == "messages" else containers()[kind]
    want = cli_outputs["chats" if kind == "messages" else "records"]
    scores, embeddings = model.score_embed(make())
    assert scores.dtype == np.float32 and embeddings.dtype == np.float32
    np.testing.assert_array_equal(scores, want["score"])
    np.testing.assert_array_equal(embeddings, want["embed"])
    np.testing.assert_array_equal(model.score(make()), want["score"])
    np.testing.assert_array_equal(model.embed(make()), want["embed"])
    texts = [tiny.TEMPLATE.render(r["instruction"], r["input"], r["output"]) for r in RECORDS]
    np.testing.assert_allclose(scores, tiny.reference(texts)[0], atol=1e-6)  # and both are the reference's


def test_select_is_the_cli_selection_and_takes_rows_in_their_container(bundle, cli_outputs):
    pd = pytest.importorskip("pandas")
    datasets = pytest.importorskip("datasets")
    model = car_onnx.load(bundle)
    sel = model.select(RECORDS, n1=5)
    assert [(RECORDS[i]["id"], int(sel.labels[i])) for i in sel.indices] == cli_outputs["records"]["selected"]
    assert sel.n_top == 5 and list(sel.reasons) == ["top"] * 5 + ["cluster"] * (len(sel.indices) - 5)
    assert sel.k == int((len(RECORDS) / 2) ** 0.5)
    np.testing.assert_array_equal(sel.scores, cli_outputs["records"]["score"])
    assert list(sel.scores[sel.indices[:5]]) == sorted(sel.scores, reverse=True)[:5]
    ids = [RECORDS[i]["id"] for i in sel.indices]
    assert [r["id"] for r in sel.take(RECORDS)] == ids
    frame = sel.take(pd.DataFrame(RECORDS))
    assert isinstance(frame, pd.DataFrame) and frame["id"].tolist() == ids
    ds = sel.take(datasets.Dataset.from_list(RECORDS))
    assert isinstance(ds, datasets.Dataset) and ds["id"] == ids
    assert sel.take({"id": [r["id"] for r in RECORDS]}) == {"id": ids}
    with pytest.raises(car_onnx.UsageError, match=r"^take: data was a one-pass iterable"):
        sel.take(r for r in RECORDS)


def test_bad_row_is_named_before_any_model_runs(bundle, monkeypatch):
    from car_onnx.runtime.graph import OnnxModel

    monkeypatch.setattr(OnnxModel, "run", lambda *a, **k: pytest.fail("a model ran"))
    model = car_onnx.load(bundle)
    rows = list(RECORDS) + [{"instruction": "a", "output": 3}]
    with pytest.raises(car_onnx.InputError, match=r"^data: row 40: field 'output': expected a string, got number$"):
        model.score(rows)
    with pytest.raises(car_onnx.InputError, match=r"^data: row 1: field 'messages': conversation has no user turn$"):
        model.embed([CHATS[0], {"messages": []}])
    with pytest.raises(car_onnx.InputError, match=r"^data: row 0: expected a JSON object, got string$"):
        model.score(["a text"])
    with pytest.raises(car_onnx.InputError, match=r"^data: no records$"):
        model.score([])
    with pytest.raises(car_onnx.UsageError, match=r"^data must be records .* got str$"):
        model.score("instruction")
    with pytest.raises(car_onnx.UsageError, match=r"^data: columns of different lengths \[1, 2\]$"):
        model.score({"instruction": ["a", "b"], "output": ["c"]})


def test_pandas_missing_input_is_empty(bundle):
    pd = pytest.importorskip("pandas")
    model = car_onnx.load(bundle)
    frame = pd.DataFrame(
        [{"instruction": "explain water", "output": "it is"}, {"instruction": "a", "input": "b", "output": "c"}]
    )
    assert frame["input"].isna().tolist() == [True, False]
    want = model.score(
        [{"instruction": "explain water", "output": "it is"}, {"instruction": "a", "input": "b", "output": "c"}]
    )
    np.testing.assert_array_equal(model.score(frame), want)


def test_parameters_are_checked_at_load_by_name(bundle):
    with pytest.raises(car_onnx.UsageError, match=r"^device must be one of cpu, cuda, auto, got 'gpu'$"):
        car_onnx.load(bundle, device="gpu")
    with pytest.raises(car_onnx.UsageError, match=r"^precision must be one of fp32, int8, fp16, got 'int4'$"):
        car_onnx.load(bundle, precision="int4")
    with pytest.raises(car_onnx.UsageError, match=r"^field takes KEY=NAME .*; got 'prompt=q'$"):
        car_onnx.load(bundle, fields={"prompt": "q"})
    with pytest.raises(ValueError, match=r"^n1 must be a count >= 0 or a percentage like 2%, got 'many'$"):
        car_onnx.load(bundle).select(RECORDS, n1="many")  # a UsageError is a ValueError
    with pytest.raises(car_onnx.BundleError, match=r"not a bundle \(no manifest\.json\)"):
        car_onnx.load(bundle.parent)
    renamed = [{"q": r["instruction"], "a": r["output"], "input": r["input"]} for r in RECORDS]
    np.testing.assert_array_equal(
        car_onnx.load(bundle, fields={"instruction": "q", "output": "a"}).score(renamed),
        car_onnx.load(bundle).score(RECORDS),
    )


def test_pickle_spawn_pool_and_threads_give_the_same_numbers(bundle):
    model = car_onnx.load(bundle, precision="fp32", threads=1)
    want = model.score(RECORDS)
    copy = pickle.loads(pickle.dumps(model))
    assert len(pickle.dumps(model)) < 1000  # the path and options, no session
    assert (copy.bundle, copy.precision, copy.threads) == (model.bundle, "fp32", 1)
    np.testing.assert_array_equal(copy.score(RECORDS), want)
    halves = [RECORDS[:20], RECORDS[20:]]
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        parts = pool.map(model.score, halves)
    np.testing.assert_array_equal(np.concatenate(parts), want)
    # One Model called from 4 threads at once (the first calls create its sessions concurrently).
    fresh = car_onnx.load(bundle, precision="fp32", threads=1)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(fresh.score, [RECORDS[i::4] for i in range(4)] * 3))
    for i, got in enumerate(results):
        np.testing.assert_array_equal(got, want[i % 4 :: 4])


def test_datasets_map_with_two_processes(bundle):
    datasets = pytest.importorskip("datasets")
    model = car_onnx.load(bundle)
    ds = datasets.Dataset.from_list(RECORDS)
    scored = ds.map(lambda batch: {"score": model.score(batch)}, batched=True, batch_size=7, num_proc=2)
    np.testing.assert_array_equal(np.array(scored["score"], dtype=np.float32), model.score(RECORDS))


def test_import_loads_no_heavy_package():
    probe = (
        "import sys, car_onnx; car_onnx.load; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers', 'optimum', 'pandas', 'datasets', 'pyarrow', 'onnxruntime', 'sklearn')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_readme_python_snippets_run(bundle, tmp_path):
    """Each ```python block of the README's Python section and of the docs' Python page runs as written (on a
    tiny bundle as the default)."""
    import os
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    section = readme.split("\n## Python\n", 1)[1].split("\n## ", 1)[0]
    snippets = re.findall(r"```python\n(.*?)```", section, re.S)
    page = re.findall(r"```python\n(.*?)```", (root / "docs" / "python.md").read_text(), re.S)
    assert len(snippets) >= 1 and len(page) >= 4
    snippets += page
    env = {**os.environ, "CAR_ONNX_BUNDLE": str(bundle)}
    for i, code in enumerate(snippets):
        (tmp_path / f"snippet{i}.py").write_text(code)
        run = subprocess.run(
            [sys.executable, f"snippet{i}.py"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600
        )
        assert run.returncode == 0, f"snippet {i}:\n{code}\n{run.stderr}"
