"""The curation report (`select --report`, `Selection.report`): its JSON block against the run's own output, escaping
of record texts, no external references, the missing extra, and the page rendered in headless Chromium."""

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import car_onnx
from car_onnx_export import tiny

WORDS = tiny.WORDS
EVIL = "<script>alert(1)</script>"
# 30 records (so every ranked record is in the top or bottom 20 the page shows), one of them hostile, one a copy
RECORDS = [
    {
        "instruction": f"explain the {WORDS[i % 60]} of water",
        "input": "",
        "output": f"the {WORDS[i % 60]} is {WORDS[-1 - i % 37]} and {WORDS[i % 11]}",
        "id": i,
    }
    for i in range(28)
]
RECORDS += [{"instruction": EVIL, "input": "", "output": "the water is cold", "id": 28}, {**RECORDS[3], "id": 29}]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def block(page: str) -> dict:
    found = re.findall(r'<script type="application/json" id="car-onnx-report">(.*?)</script>', page, re.S)
    assert len(found) == 1
    return json.loads(found[0])


@pytest.fixture(scope="module")
def run(tmp_path_factory, cli, rows_of):
    """One `select --all --report` on the tiny bundle: (page text, output rows, tmp dir, bundle)."""
    tmp = tmp_path_factory.mktemp("report")
    bundle = tiny.make_bundle(tmp / "bundle")
    data = tmp / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    rc, out, err, _ = cli(
        "select",
        data,
        "-b",
        bundle,
        "-o",
        tmp / "out.json",
        "--n1",
        "5",
        "--all",
        "--report",
        tmp / "report.html",
        "--quiet",
    )
    assert rc == 0, err
    return (tmp / "report.html").read_text(encoding="utf-8"), rows_of(tmp / "out.json", "json"), tmp, bundle


def test_json_block_matches_the_output(run):
    page, rows, tmp, _ = run
    data = block(page)
    ranked = [r for r in rows if r["rank"] is not None]
    selected = [r for r in rows if r["selected"]]
    assert data["records"] == len(RECORDS) == len(rows)
    assert data["rejected"] == 0 and data["duplicates"] == {"exact": 1, "near": 0}
    assert data["ranked"] == len(ranked) == len(RECORDS) - 1
    assert data["selected"] == len(selected)
    assert data["top"] == data["n1"] == sum(r["reason"] == "top" for r in rows) == 5
    assert data["cluster_picks"] == sum(r["reason"] == "cluster" for r in rows) == len(selected) - 5
    assert data["n1_requested"] == "5" and data["n2"] == "1" and data["dedup"] == "exact"
    assert data["k"] == len({r["cluster"] for r in rows}) == int(np.sqrt(len(ranked) / 2))
    assert data["pca_components"] >= 1 and 0.95 <= data["pca_variance_kept"] <= 1.0
    assert set(data["seconds"]) == {"read", "score+embed", "cluster+select", "write"}
    assert data["n1_cut_score"] == pytest.approx(sorted(r["score"] for r in ranked)[-5], abs=1e-6)
    assert data["input"] == str(tmp / "data.jsonl") and data["version"] == car_onnx.__version__
    assert [m["precision"] for m in data["bundle"]["models"]] == ["fp32"]
    for c in data["clusters"]:
        members = [r for r in ranked if r["cluster"] == c["cluster"]]
        assert c["size"] == len(members)
        assert c["kept"] == sum(r["selected"] for r in members) == c["top"] + c["cluster_picks"]
        assert c["top"] == sum(r["reason"] == "top" for r in members)
        assert c["mean_score"] == pytest.approx(np.mean([r["score"] for r in members]), abs=1e-6)
    assert sum(c["size"] for c in data["clusters"]) == len(ranked)
    from scipy.stats import spearmanr

    lengths = [len(tiny.TEMPLATE.render(r["instruction"], r["input"], r["output"])) for r in ranked]
    rho = spearmanr(lengths, [r["score"] for r in ranked]).statistic
    assert data["length_score_spearman"] == pytest.approx(rho, abs=1e-4)
    assert data["median_length"]["all"] == np.median(lengths)


def test_record_texts_are_escaped_and_shown(run):
    page, rows, _, _ = run
    assert EVIL not in page and "alert(1)" in page
    assert html.escape(tiny.TEMPLATE.render(EVIL, "", "the water is cold")) in page
    best = max((r for r in rows if r["rank"] is not None), key=lambda r: r["score"])
    text = html.escape(tiny.TEMPLATE.render(best["instruction"], best["input"], best["output"]))
    top_table = page.split("<h3>Top 20</h3>")[1].split("</table>")[0]
    assert f'<td class="t">{text}</td>' in top_table.split("</tr>")[1]  # the first row under the header
    assert page.count("<script") == 1  # only the JSON block
    dup_table = page.split("<h2>6. Duplicates dropped</h2>")[1].split("</table>")[0]
    assert "1 record was dropped before ranking as duplicates of a kept one; the first 1:" in dup_table
    assert "<td>line 30</td><td>line 4</td>" in dup_table  # the copy of record 4, at the end of the file


def test_page_references_nothing_external(run):
    page = run[0]
    refs = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)', page)
    assert refs and all(r.startswith(("data:", "#")) for r in refs), [
        r[:40] for r in refs if not r.startswith(("data:", "#"))
    ]
    assert not re.search(r"<link|<iframe|<object|<embed|@import|url\((?!#)", page, re.I)
    assert "<!DOCTYPE svg" not in page and "<?xml" not in page


def test_without_the_extra_fails_before_any_work(tmp_path, cli):
    bundle = tiny.make_bundle(tmp_path / "bundle")
    graph = bundle / "joint" / "model.fp32.onnx"  # a broken graph: a model run would fail differently
    graph.write_bytes(graph.read_bytes()[:-10])
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "matplotlib.py").write_text("raise ImportError('no matplotlib here')\n")
    import os

    env = {**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    rc, out, err, _ = cli(
        "select", data, "-b", bundle, "-o", tmp_path / "out.json", "--report", tmp_path / "r.html", env=env
    )
    assert (rc, err) == (2, "car-onnx: error: --report needs matplotlib: pip install 'car-onnx[report]'")
    assert not (tmp_path / "out.json").exists() and not (tmp_path / "r.html").exists()


def test_python_api_report(tmp_path):
    bundle = tiny.make_bundle(tmp_path / "bundle")
    sel = car_onnx.load(bundle).select(RECORDS, n1=5)
    sel.report(tmp_path / "r.html")
    data = block((tmp_path / "r.html").read_text(encoding="utf-8"))
    assert data["selected"] == len(sel.indices) and data["top"] == sel.n_top == 5 and data["k"] == sel.k
    assert data["duplicates"] == {"exact": 1, "near": 0}
    kept = np.bincount(sel.labels[sel.indices], minlength=sel.k)
    assert [c["kept"] for c in data["clusters"]] == kept.tolist()
    flat = car_onnx.load(bundle).select(RECORDS, n1=5, pca_variance=1.0)  # no PCA ran: the map projects itself
    flat.report(tmp_path / "flat.html")
    assert block((tmp_path / "flat.html").read_text(encoding="utf-8"))["pca_components"] == flat.n_components == 8
    with pytest.raises(car_onnx.UsageError, match="keeps no records to show"):
        car_onnx.load(bundle).select(iter(RECORDS), n1=5).report(tmp_path / "r2.html")


def test_page_renders_offline_in_chromium(run, tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.skip("Debian package chromium is not installed (apt-get install chromium; .ci/run installs it)")
    from matplotlib.image import imread

    page = run[2] / "report.html"
    shot = tmp_path / "shot.png"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--proxy-server=http://127.0.0.1:9",  # no network
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--hide-scrollbars",
        "--window-size=1200,1800",
        f"--screenshot={shot}",
        page.as_uri(),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and shot.is_file(), p.stderr[-2000:]
    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (1800, 1200)
    assert (pixels.min(axis=2) < 0.9).mean() > 0.03  # text, tables and figures, not a blank page
    blue = np.abs(pixels - np.array([0x1F, 0x5F, 0xA8]) / 255).max(axis=2) < 0.05
    assert blue.sum() > 50  # the histogram's top-n1 bars: the inline SVG figures were drawn
