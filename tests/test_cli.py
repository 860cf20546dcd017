"""The `car-onnx` command end to end on a tiny bundle: outputs byte for byte, errors by message, no torch."""

import json

import numpy as np
import pytest

from car_onnx.io.writers import open_writer
from car_onnx_export import tiny

RECORDS = [
    {
        "instruction": f"explain the {w} of water",
        "input": "" if i % 3 else f"what {w} is",
        "output": f"the {w} is {v}",
        "id": i,
    }
    for i, (w, v) in enumerate(zip(tiny.WORDS[:30], reversed(tiny.WORDS[30:60])))
]


def same_file(got_path, want_rows, fmt, scratch, rows_of):
    """The output holds the expected rows (scores to float32 precision) and is byte for byte what the writer makes
    of them: scores in the expected rows are taken from the output once they are checked to be close."""
    got = rows_of(got_path, fmt)
    assert [{k: v for k, v in r.items() if k != "score"} for r in got] == [
        {k: v for k, v in r.items() if k != "score"} for r in want_rows
    ]
    np.testing.assert_allclose([float(r["score"]) for r in got], [r["score"] for r in want_rows], atol=1e-6)
    exact = [{**w, "score": g["score"] if fmt != "csv" else float(g["score"])} for w, g in zip(want_rows, got)]
    assert got_path.read_bytes() == expected_bytes(scratch, fmt, exact)


def expected_bytes(path, fmt, rows):
    with open_writer(path, fmt) as w:
        for row in rows:
            w.write(row)
    return path.read_bytes()


@pytest.fixture
def setup(tmp_path):
    bundle = tiny.make_bundle(tmp_path / "bundle")
    data = tmp_path / "data.json"
    data.write_text(json.dumps(RECORDS, indent=1))
    return tmp_path, bundle, data


def test_select_writes_the_reference_selection_without_torch(setup, cli, expected_selection, rows_of):
    tmp, bundle, data = setup
    rc, out, err, heavy = cli("select", data, "-o", tmp / "sel.json", "--bundle", bundle, "--n1", "4", "--quiet")
    assert rc == 0, err
    assert heavy == []
    same_file(tmp / "sel.json", expected_selection(RECORDS, 4, 1), "json", tmp / "expected.json", rows_of)


def test_select_all_and_percent_sizes_in_jsonl(setup, cli, expected_selection, rows_of):
    tmp, bundle, _ = setup
    data = tmp / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    rc, _, err, _ = cli("select", data, "-o", tmp / "all.jsonl", "-b", bundle, "--n1", "10%", "--all", "-q")
    assert rc == 0, err
    same_file(tmp / "all.jsonl", expected_selection(RECORDS, 3, 1, write_all=True), "jsonl", tmp / "e.jsonl", rows_of)


def test_csv_with_field_mapping_and_summary(setup, cli, expected_selection, rows_of):
    tmp, bundle, _ = setup
    data = tmp / "data.csv"
    rows = [{"question": r["instruction"], "context": r["input"], "answer": r["output"]} for r in RECORDS]
    expected_bytes(data, "csv", rows)
    rc, _, err, _ = cli(
        "select",
        data,
        "-o",
        tmp / "sel.csv",
        "-b",
        bundle,
        "--n1",
        "2",
        "--field",
        "instruction=question",
        "--field",
        "input=context",
        "--field",
        "output=answer",
    )
    assert rc == 0, err
    assert err.splitlines()[-1].startswith("car-onnx: 30 records; ")
    renamed = [{"instruction": r["question"], "input": r["context"], "output": r["answer"]} for r in rows]
    ref = expected_selection(renamed, 2, 1)
    want = [
        {
            "question": r["instruction"],
            "context": r["input"],
            "answer": r["output"],
            "score": r["score"],
            "cluster": r["cluster"],
            "rank": r["rank"],
            "reason": r["reason"],
        }
        for r in ref
    ]
    same_file(tmp / "sel.csv", want, "csv", tmp / "e.csv", rows_of)


def test_score_and_embed(setup, cli):
    tmp, bundle, data = setup
    texts = [tiny.TEMPLATE.render(r["instruction"], r["input"], r["output"]) for r in RECORDS]
    scores, vectors = tiny.reference(texts)
    rc, _, err, heavy = cli("score", data, "-o", tmp / "s.json", "-b", bundle, "-q")
    assert rc == 0 and heavy == [], err
    got = json.loads((tmp / "s.json").read_text())
    assert [r["id"] for r in got] == list(range(len(RECORDS)))
    np.testing.assert_allclose([r["score"] for r in got], scores, atol=1e-6)
    rc, _, err, _ = cli("embed", data, "-o", tmp / "e.npy", "-b", bundle, "-q")
    assert rc == 0, err
    emb = np.load(tmp / "e.npy")
    assert emb.dtype == np.float32 and emb.shape == vectors.shape
    np.testing.assert_allclose(emb, vectors, atol=1e-6)


BAD = [
    (
        "bad.json",
        b'[{"instruction": "a", "output": "b"},\n {"instruction": "a", "output": 3}]',
        "bad.json: record 2: field 'output': expected a string, got number",
    ),
    (
        "bad.json",
        b'[{"instruction": "a", "output": "b"},\n {"instruction": "a"',
        "bad.json: line 2, column 21: invalid JSON: Expecting ',' delimiter",
    ),
    ("bad.json", b'[["a"]]', "bad.json: record 1: expected a JSON object, got array"),
    (
        "bad.jsonl",
        b'{"instruction": "a", "output": "b"}\n{"output": "b"}\n',
        "bad.jsonl: line 2: field 'instruction': missing field",
    ),
    (
        "bad.jsonl",
        b'{"instruction": "a", "output": "b"}\n{"instruction": null, "output": "b"}\n',
        "bad.jsonl: line 2: field 'instruction': expected a string, got null",
    ),
    (
        "bad.jsonl",
        b'{"instruction": "a", "output": "b"}\n\n{"instruction": "a", "output": "b"}\n',
        "bad.jsonl: line 2: empty line",
    ),
    (
        "bad.jsonl",
        b'{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": "\xff"}\n',
        "bad.jsonl: line 2: invalid UTF-8 (byte 0xff)",
    ),
    ("bad.jsonl", b"", "bad.jsonl: no records"),
    ("bad.json", b"[]", "bad.json: no records"),
    ("bad.csv", b"instruction,output\na,b\nc\n", "bad.csv: line 3: expected 2 cells like the header, got 1"),
    ("bad.csv", b"instruction,answer\na,b\n", "bad.csv: line 1: the header has no column 'output'"),
    (
        "bad.jsonl",
        b'{"instruction": "a", "output": "b", "score": 1}\n',
        "bad.jsonl: line 1: field 'score': already has a field 'score' that the output would overwrite (name the added field with --score-field)",
    ),
]


@pytest.mark.parametrize("name,content,message", BAD, ids=[m for _, _, m in BAD])
def test_bad_input_is_one_line_and_no_output(setup, name, content, message, cli):
    tmp, bundle, _ = setup
    (tmp / name).write_bytes(content)
    out = tmp / ("out" + (tmp / name).suffix)
    rc, stdout, err, _ = cli("select", tmp / name, "-o", out, "-b", bundle, "-q", cwd=tmp)
    assert rc == 1
    assert err == f"car-onnx: error: {tmp / name}: {message.split(': ', 1)[1]}"
    assert not out.exists() and sorted(p.name for p in tmp.iterdir()) == sorted(["bundle", "data.json", name])


def test_output_safety(setup, cli):
    tmp, bundle, data = setup
    rc, _, err, _ = cli("select", data, "-o", data, "-b", bundle, "-q")
    assert (rc, err) == (2, f"car-onnx: error: {data}: the output would overwrite the input; choose another path")
    (tmp / "exists.json").write_text("keep")
    rc, _, err, _ = cli("select", data, "-o", tmp / "exists.json", "-b", bundle, "-q")
    assert (rc, err) == (2, f"car-onnx: error: {tmp / 'exists.json'}: already exists; pass --force to replace it")
    assert (tmp / "exists.json").read_text() == "keep"
    rc, _, err, _ = cli("select", data, "-o", tmp / "exists.json", "-b", bundle, "-q", "--force")
    assert rc == 0, err


def test_missing_default_bundle_says_how_to_build_it(setup, cli):
    tmp, _, data = setup
    import os

    env = {k: v for k, v in os.environ.items() if k != "CAR_ONNX_BUNDLE"} | {"XDG_DATA_HOME": str(tmp / "xdg")}
    rc, _, err, _ = cli("select", data, "-o", tmp / "o.json", env=env)
    assert rc == 1
    assert err == (
        f"car-onnx: error: no bundle given and no default bundle at {tmp}/xdg/car-onnx/default; build it "
        "with `car-onnx export default` (needs `pip install 'car-onnx[export]'`), or pass --bundle DIR / "
        "set CAR_ONNX_BUNDLE"
    )


def test_usage_errors(setup, cli):
    tmp, bundle, data = setup
    rc, _, err, _ = cli("select", data, "-o", tmp / "o.json", "-b", bundle, "--n1", "lots")
    assert (rc, err) == (2, "car-onnx: error: --n1 must be a count >= 0 or a percentage like 2%, got 'lots'")
    rc, _, err, _ = cli("select", data, "-o", tmp / "o.json", "-b", bundle, "--field", "prompt=q")
    assert rc == 2 and "--field takes KEY=NAME" in err
    rc, _, err, _ = cli("embed", data, "-o", tmp / "o.json", "-b", bundle)
    assert (rc, err) == (2, f"car-onnx: error: {tmp / 'o.json'}: embeddings are written as .npy; name the output *.npy")


def test_the_cli_runs_the_python_file_entry_and_model_select_agrees(setup, cli):
    """`car-onnx select` is `car_onnx.jobs.select` with the options the CLI parsed: the same bytes; and the
    in-memory entry (Model.select) picks the same rows in the same order."""
    import car_onnx
    from car_onnx.core.selection import SelectOptions
    from car_onnx.jobs import Job, select

    tmp, bundle, data = setup
    args = ("--n1", "10%", "--n2", "2", "--dedup", "none", "--cluster", "exact")
    rc, _, err, _ = cli("select", data, "-o", tmp / "cli.jsonl", "--bundle", bundle, *args, "--quiet")
    assert rc == 0, err
    options = SelectOptions.parse(n1="10%", n2="2", dedup="none", cluster="exact")
    model = car_onnx.load(bundle)
    summary = select(Job(data), model, tmp / "api.jsonl", options=options)
    assert (tmp / "api.jsonl").read_bytes() == (tmp / "cli.jsonl").read_bytes()
    sel = model.select(RECORDS, n1="10%", n2=2, dedup="none", cluster="exact")
    got = [json.loads(line)["id"] for line in (tmp / "api.jsonl").read_text().splitlines()]
    assert got == [RECORDS[i]["id"] for i in sel.indices] and summary.selected == len(sel.indices) == len(got)
