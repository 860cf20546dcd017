"""What the test modules share: the CLI run in a subprocess, output rows read back, the reference selection
computed from the tiny bundle's numpy reference, and the scorer head written out in numpy."""

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from car_onnx import car_select
from car_onnx_export import tiny

HEAVY = (
    "torch",
    "transformers",
    "optimum",
    "sentence_transformers",
    "datasets",
)  # scikit-learn imports pandas where it is installed


def run_cli(*args, cwd=None, env=None):
    """Run `car-onnx ARGS` in a subprocess; returns (exit code, stdout, stderr, heavy modules imported)."""
    code = (
        "import json, sys\nfrom car_onnx.cli import main\nsys.argv = ['car-onnx', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    rc = e.code or 0\nelse:\n    rc = 0\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})), file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env)
    *err, modules = p.stderr.rstrip("\n").split("\n")
    return p.returncode, p.stdout, "\n".join(err), json.loads(modules)


def read_rows(path, fmt):
    if fmt == "json":
        return json.loads(path.read_text())
    if fmt == "jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    import csv

    typed = {
        "cluster": int,
        "rank": lambda v: int(v) if v else None,
        "reason": lambda v: v or None,
        "selected": lambda v: {"True": True, "False": False}[v],
    }
    return [{k: typed[k](v) if k in typed else v for k, v in r.items()} for r in csv.DictReader(path.open(newline=""))]


def reference_rows(records, n1, n2, write_all=False, dedup=True):
    """The rows `select` must write: the numpy reference's scores, exact duplicates (the same whitespace-normalised
    text) left out of ranking, the selection, and each row's rank and reason."""
    texts = [tiny.TEMPLATE.render(r["instruction"], r["input"], r["output"]) for r in records]
    scores, vectors = tiny.reference(texts)
    first = {}
    dup = [first.setdefault(" ".join(t.split()), i) for i, t in enumerate(texts)] if dedup else range(len(texts))
    duplicate_of = [-1 if d == i else d for i, d in enumerate(dup)]
    sel = car_select(scores, vectors, n1=n1, n2=n2, duplicate_of=duplicate_of)
    ranked = sorted((i for i in range(len(records)) if duplicate_of[i] < 0), key=lambda i: -scores[i])
    rank = {i: place for place, i in enumerate(ranked, 1)}
    reason = {int(i): "top" if p < sel.n_top else "cluster" for p, i in enumerate(sel.indices)}
    order = range(len(records)) if write_all else [int(i) for i in sel.indices]
    rows = []
    for i in order:
        row = {**records[i], "score": float(str(scores[i])), "cluster": int(sel.labels[i]), "rank": rank.get(i)}
        if write_all:
            row["selected"] = i in reason
        rows.append({**row, "reason": reason.get(i)})
    return rows


def job_records(n=6000, seed=0):
    """n small records over the tiny bundle's words (every fourth with an input), each with its index as id."""
    rng = np.random.default_rng(seed)
    words = np.array(tiny.WORDS)
    return [
        {
            "instruction": " ".join(rng.choice(words, 4)),
            "input": "" if i % 4 else " ".join(rng.choice(words, 2)),
            "output": " ".join(rng.choice(words, int(rng.integers(1, 9)))),
            "id": i,
        }
        for i in range(n)
    ]


class Job(NamedTuple):
    """The select job the fault and reliability tests share: `path` holds 6,000 records, run with `args` in
    120 chunks of 50 (long enough to be stopped half-way) on the tiny `bundle`; `root / "plain.jsonl"` is the
    output of an uninterrupted run, the bytes every resumed or constrained run must give."""

    root: Path
    bundle: Path
    path: Path
    args = ("--n1", "40", "--chunk-records", "50")
    records = staticmethod(job_records)


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    """The shared Job (see Job), its input written and its uninterrupted output made once per session."""
    root = tmp_path_factory.mktemp("job")
    job = Job(root, tiny.make_bundle(root / "bundle"), root / "data.jsonl")
    job.path.write_text("".join(json.dumps(r) + "\n" for r in job_records()))
    rc, _, err, _ = run_cli("select", job.path, "-o", root / "plain.jsonl", "-b", job.bundle, *job.args, "-q")
    assert rc == 0, err
    return job


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


# --- the trained scorer head written out in numpy (an independent reference), and its training pairs ----------


def write_pairs(path, records):
    """The sample holds a good then a poor answer per instruction: written as src,score pairs (revision = 1)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["src", "score"])
        for good, poor in zip(records[::2], records[1::2]):
            for r, s in ((poor, 0), (good, 1)):
                w.writerow([f"Instruction: {r['instruction']} Response: {r['output']}", s])


def own_sparsemax(z):
    zs = np.sort(z)[::-1]
    k = np.arange(1, len(z) + 1)
    cum = np.cumsum(zs)
    kz = k[1 + k * zs > cum].max()
    return np.maximum(z - (cum[kz - 1] - 1) / kz, 0)


def head_score(weights, hidden, mask):
    """The head written out independently: sparsemax mix, mean over the mask, Linear-Tanh-...-Linear."""
    s = np.array([weights[f"layerwise_attention.scalar_parameters.{i}"][0] for i in range(len(hidden))])
    w = own_sparsemax(s)
    mixed = weights["layerwise_attention.gamma"][0] * sum(wi * h for wi, h in zip(w, hidden))
    pooled = (mixed * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    x = pooled
    layers = sorted({int(k.split(".")[2]) for k in weights if k.startswith("estimator.ff.")})
    for j, idx in enumerate(layers):
        x = x @ weights[f"estimator.ff.{idx}.weight"].T + weights[f"estimator.ff.{idx}.bias"]
        if j < len(layers) - 1:
            x = np.tanh(x)
    return x[:, 0]


@pytest.fixture(scope="session")
def head_reference():
    """`head_reference(weights, hidden, mask)`: the scorer head's score computed in numpy."""
    return head_score


def without(weights: Path, folder: Path, terms: tuple[str, ...]) -> Path:
    """A copy of the head `weights` in `folder` without the terms (and readers) named `terms`."""
    from safetensors.numpy import load_file, save_file

    out = Path(folder) / f"{Path(weights).stem}_without_{'_'.join(terms)}.safetensors"
    state = load_file(str(weights))
    save_file({k: v for k, v in state.items() if not k.startswith(tuple(f"{t}." for t in terms))}, str(out))
    meta = json.loads(Path(weights).with_suffix(".json").read_text())
    for name in terms:
        meta.pop(name, None)
    out.with_suffix(".json").write_text(json.dumps(meta))
    return out


@pytest.fixture(scope="session")
def head_without_ends():
    """`head_without_ends(weights, folder)`: a copy of a head as it was before its end reader: without its end
    reader and term, nor the recall term trained after them."""
    return lambda weights, folder: without(weights, folder, ("ends", "end_defects", "recall_defects"))


@pytest.fixture(scope="session")
def head_without_recall():
    """`head_without_recall(weights, folder)`: a copy of a head without its recall term."""
    return lambda weights, folder: without(weights, folder, ("recall_defects",))


@pytest.fixture(scope="session")
def pairs_writer():
    """`pairs_writer(path, records)`: the sample's good/poor answers as src,score training pairs."""
    return write_pairs


@pytest.fixture(scope="session")
def trained_beside():
    """`trained_beside(base, folder, **term)`: a head trained by train_head beside `base` (with `term`, e.g.
    end_term=True) on 60 pairs (the sample's instructions three times), its weights file and weights; every weight
    of `base` is checked kept bit for bit."""

    def train(base: Path, folder: Path, **term) -> tuple[Path, dict]:
        from safetensors.numpy import load_file

        from car_onnx_export.train import train_head

        records = json.loads((Path(__file__).resolve().parents[1] / "car_onnx" / "data" / "sample.json").read_text())
        many = [r | {"instruction": f"{r['instruction']} ({k})"} for k in range(3) for r in records]  # 60 pairs
        write_pairs(folder / "train.csv", many)
        write_pairs(folder / "valid.csv", records[30:])
        weights = folder / "h.safetensors"
        train_head(folder / "train.csv", folder / "valid.csv", weights, base=base, log=lambda s: None, **term)
        kept, got = load_file(str(base)), load_file(str(weights))
        assert all(np.array_equal(got[name], value) for name, value in kept.items())
        return weights, got

    return train


def said_in_place_by_hand(ids, words, times=3, period=64) -> bool:
    """reading.said_in_place by every start and period: a part of 2 to `period` tokens, one of them a word
    (`words[id]`), followed by `times - 1` copies of itself."""
    ids = list(ids)
    for p in range(2, period + 1):
        for s in range(len(ids) - times * p + 1):
            part = ids[s : s + p]
            if any(words[t] for t in part) and all(ids[s + k * p : s + (k + 1) * p] == part for k in range(times)):
                return True
    return False


@pytest.fixture(scope="session")
def in_place_by_hand():
    """`in_place_by_hand(ids, words)`: whether a part is said three times in a row, tried at every start."""
    return said_in_place_by_hand
