"""What the test modules share: the CLI run in a subprocess, output rows read back, and the reference selection
computed from the tiny bundle's numpy reference."""

import json
import subprocess
import sys

import pytest

from car_onnx import car_select
from car_onnx_export import tiny

HEAVY = ("torch", "transformers", "optimum", "sentence_transformers", "pandas", "datasets")


def run_cli(*args, cwd=None, env=None):
    """Run `car-onnx ARGS` in a subprocess; returns (exit code, stdout, stderr, heavy modules imported)."""
    code = ("import json, sys\nfrom car_onnx.cli import main\nsys.argv = ['car-onnx', *sys.argv[1:]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    rc = e.code or 0\nelse:\n    rc = 0\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})), file=sys.stderr)\n"
            "sys.exit(rc)\n")
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env)
    *err, modules = p.stderr.rstrip("\n").split("\n")
    return p.returncode, p.stdout, "\n".join(err), json.loads(modules)


def read_rows(path, fmt):
    if fmt == "json":
        return json.loads(path.read_text())
    if fmt == "jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    import csv
    rows = list(csv.DictReader(path.open(newline="")))
    return [{**r, "cluster": int(r["cluster"])} for r in rows]


def reference_rows(records, n1, n2, write_all=False):
    texts = [tiny.TEMPLATE.render(r["instruction"], r["input"], r["output"]) for r in records]
    scores, vectors = tiny.reference(texts)
    sel = car_select(scores, vectors, n1=n1, n2=n2)
    order = range(len(records)) if write_all else sel.indices
    return [{**records[i], "score": float(str(scores[i])), "cluster": int(sel.labels[i])} for i in order]


@pytest.fixture(scope="session")
def cli():
    """`cli("select", ...)` -> (exit code, stdout, stderr, heavy modules the process imported)."""
    return run_cli


@pytest.fixture(scope="session")
def rows_of():
    """`rows_of(path, fmt)`: the rows of an output file."""
    return read_rows


@pytest.fixture(scope="session")
def expected_selection():
    """`expected_selection(records, n1, n2, write_all=False)`: the output rows the tiny bundle must give."""
    return reference_rows
