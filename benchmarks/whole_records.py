"""Whole records (docs/whole-records.md): whether the better record still wins when it sits in a conversation or a
long answer, and what reading a whole record costs against its length.

- Held-out expert pairs (score_valid.csv, never trained on nor chosen on): the revision against the original, alone,
  then as the last and as the first exchange of a two-exchange conversation whose other exchange is another pair's
  revision (every exchange read; and with --turns first, the paper's reading).
- Five-part answers from the paper's selected Alpaca records (car_selected_iqs.json): the complete answer against
  the same with its last two parts replaced by "I don't know.", over all of them, over those longer than one window
  and over those within one.
- Which mean combines a record's units (windows, exchanges): each rule on the same units' scores; which embedding
  of a conversation keeps its topic: two exchanges of one cluster of the paper's selection, the share of each
  conversation's 10 nearest from the same cluster.
- Cost: score+embed per record against the answer's length in tokens (text of the shared corpora), with the windows
  read per record, for the CPU default (int8) of both bundles.

    python -m benchmarks.whole_records [--quick] [--work DIR] [--aggregates: these two measurements alone]
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

import car_onnx
from car_onnx.evaluate import read_pairs
from car_onnx.runtime.manifest import Template

from .common import ROOT, section_main, shared_file

LENGTHS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)  # answer tokens


def bundles(work: Path, names=("default", "multilingual")) -> dict[str, Path]:
    """The bundles `names` as the export builds them now (with the reading rule), built once under `work`."""
    from car_onnx_export.default import export_default
    from car_onnx_export.multilingual import export_multilingual

    out = {name: work / f"whole-{name}" for name in names}
    for name, path in out.items():
        if not (path / "manifest.json").is_file():
            if name == "default":
                export_default(path, precisions=("fp32", "int8"), log=lambda m: None)
            else:
                export_multilingual(path, log=lambda m: None)
    return out


def conversation(*exchanges) -> dict:
    turns = []
    for instruction, input, output in exchanges:
        question = f"{instruction}\n{input}" if input else instruction
        turns += [{"role": "user", "content": question}, {"role": "assistant", "content": output}]
    return {"messages": turns}


def preferred(model, better: list, worse: list) -> float:
    a, b = model.score(better), model.score(worse)
    return round(float(np.mean(a > b)), 4)


def pairs_in_conversations(path: Path, precision: str) -> dict:
    from car_onnx_export.train import TEMPLATE

    good, bad = read_pairs(shared_file("expert_revised", "score_valid.csv"), Template(**TEMPLATE))
    good, bad = [(r.instruction, r.input, r.output) for r in good], [(r.instruction, r.input, r.output) for r in bad]
    other = good[1:] + good[:1]  # another pair's revision
    model = car_onnx.load(path, precision=precision)
    first = car_onnx.load(path, precision=precision, turns="first")
    flat = (
        [dict(zip(("instruction", "input", "output"), x)) for x in good],
        [dict(zip(("instruction", "input", "output"), x)) for x in bad],
    )
    last = [conversation(o, g) for o, g in zip(other, good)], [conversation(o, w) for o, w in zip(other, bad)]
    ahead = [conversation(g, o) for o, g in zip(other, good)], [conversation(w, o) for o, w in zip(other, bad)]
    return {
        "pairs": len(good),
        "alone": preferred(model, *flat),
        "last_of_two": preferred(model, *last),
        "first_of_two": preferred(model, *ahead),
        "last_of_two_turns_first": preferred(first, *last),
    }


def five_part(path: Path, precision: str, n: int) -> dict:
    corpus = json.loads(shared_file("corpora", "car_selected_iqs.json").read_text())
    corpus = [r for r in corpus if not r["input"] and r["output"].strip()]
    rng = np.random.default_rng(0)
    model = car_onnx.load(path, precision=precision)
    complete, cut, long = [], [], []
    for _ in range(n):  # five distinct records each (a record may serve in several answers)
        parts = [corpus[i] for i in rng.choice(len(corpus), 5, replace=False)]
        instruction = "Answer each of these five requests in turn.\n" + "\n".join(
            f"{k + 1}. {p['instruction']}" for k, p in enumerate(parts)
        )
        answers = [p["output"] for p in parts]
        for out, tail in ((complete, answers[3:]), (cut, ["I don't know."] * 2)):
            text = "\n\n".join(f"{k + 1}. {a}" for k, a in enumerate(answers[:3] + tail))
            out.append({"instruction": instruction, "output": text})
        long.append(model.units(_record(complete[-1]))[1] > 1)
    a, b = model.score(complete), model.score(cut)
    long = np.array(long)
    return {
        "answers": n,
        "longer_than_one_window": int(long.sum()),
        "complete_preferred": round(float(np.mean(a > b)), 4),
        "complete_preferred_when_longer": round(float(np.mean((a > b)[long])), 4) if long.any() else None,
        "complete_preferred_when_one_window": round(float(np.mean((a > b)[~long])), 4) if not long.all() else None,
    }


def aggregates(path: Path) -> dict:
    """How to combine a record's units, chosen by measurement: the held-out pairs (alone, and as the last exchange
    of two) with each rule applied to every unit (window or exchange) of the fp32 default bundle's scores."""
    from car_onnx.runtime.bundle import Bundle
    from car_onnx.runtime.session import SessionConfig
    from car_onnx_export.train import TEMPLATE

    graph = Bundle(path, SessionConfig(device="cpu", precision="fp32")).model("score")
    good, bad = read_pairs(shared_file("expert_revised", "score_valid.csv"), Template(**TEMPLATE))
    other = good[1:] + good[:1]

    def units(records) -> list[list[tuple[float, int]]]:
        per = [graph.reader.units(_record(r)) for r in records]
        texts = list(dict.fromkeys((u.text, u.start) for us in per for u in us))
        at = {x: i for i, x in enumerate(texts)}
        s = graph.run([x for x, _ in texts], ("score",), starts=[y for _, y in texts])["score"]
        return [[(float(s[at[(u.text, u.start)]]), u.tokens) for u in us] for us in per]

    rules = {
        "mean": lambda us: np.mean([s for s, _ in us]),
        "token_weighted_mean": lambda us: sum(s * w for s, w in us) / sum(w for _, w in us),
        "minimum": lambda us: min(s for s, _ in us),
        "first_unit": lambda us: us[0][0],
    }
    row = lambda x: {"instruction": x.instruction, "input": x.input, "output": x.output}  # noqa: E731
    placed = {
        "alone": ([row(g) for g in good], [row(b) for b in bad]),
        "last_of_two": (
            [conversation(*[(x.instruction, x.input, x.output) for x in (o, g)]) for o, g in zip(other, good)],
            [conversation(*[(x.instruction, x.input, x.output) for x in (o, b)]) for o, b in zip(other, bad)],
        ),
    }
    out = {}
    for name, (better, worse) in placed.items():
        a, b = units(better), units(worse)
        out[name] = {rule: round(float(np.mean([f(x) > f(y) for x, y in zip(a, b)])), 4) for rule, f in rules.items()}
    return out


def embedding_rules(path: Path, neighbours: int = 10) -> dict:
    """Which embedding of a conversation clusters better: conversations of two exchanges from one topic cluster of
    the paper's own selection (car_selected_iqs.json's labels), embedded by the rule (the plain mean of the
    exchanges'), by the mean weighted by each exchange's answer tokens, and by the first exchange alone (--turns
    first); per conversation, the share of its nearest conversations (cosine) from the same cluster."""
    rows = [r for r in json.loads(shared_file("corpora", "car_selected_iqs.json").read_text()) if r["output"].strip()]
    by_label: dict = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r)
    talks, labels = [], []
    for label, members in sorted(by_label.items()):
        for a, b in zip(members[0::2], members[1::2]):
            talks.append(conversation(*[(x["instruction"], x["input"], x["output"]) for x in (a, b)]))
            labels.append(label)
    labels = np.array(labels)
    model = car_onnx.load(path, precision="fp32")
    turns = [m["content"] for talk in talks for m in talk["messages"]]  # user, assistant, user, assistant, ...
    alone = model.embed([{"instruction": q, "output": a} for q, a in zip(turns[0::2], turns[1::2])])
    from tokenizers import Tokenizer

    counter = Tokenizer.from_file(str(path / model.manifest.model_for("embed").tokenizer))
    tokens = np.array([len(counter.encode(a, add_special_tokens=False).ids) for a in turns[1::2]], dtype=np.float64)
    weighted = tokens[0::2, None] * alone[0::2] + tokens[1::2, None] * alone[1::2]
    ways = {
        "rule": model.embed(talks),  # the mean of the exchanges'
        "weighted_by_tokens": weighted,
        "first_exchange": car_onnx.load(path, precision="fp32", turns="first").embed(talks),
    }
    out = {"conversations": len(talks), "clusters": int(len(set(labels.tolist())))}
    for name, e in ways.items():
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        sim = e @ e.T
        np.fill_diagonal(sim, -np.inf)
        near = np.argsort(-sim, axis=1)[:, :neighbours]
        out[name] = round(float((labels[near] == labels[:, None]).mean()), 4)
    return out


def _record(row: dict):
    from car_onnx.io.records import FieldMap, make_record

    return make_record("benchmark", 0, "row 0", row, FieldMap())


def first_window(path: Path, work: Path) -> Path:
    """A copy of the bundle without its reading rule: it reads the first max_length tokens, as bundles did before."""
    import shutil

    out = work / f"{path.name}-first-window"
    if not (out / "manifest.json").is_file():
        shutil.copytree(path, out, dirs_exist_ok=True)
        manifest = json.loads((out / "manifest.json").read_text())
        for model in manifest["models"]:
            model.pop("reading", None)
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def cost(path: Path, work: Path, n: int, rounds: int) -> list[dict]:
    """Seconds of score+embed per record at each answer length (tokens of the scorer's tokenizer), reading whole
    records against reading the first window alone (the same bundle without its reading rule), alternated."""
    from tokenizers import Tokenizer

    models = {
        "whole": car_onnx.load(path, precision="int8"),
        "first": car_onnx.load(first_window(path, work), precision="int8"),
    }
    counter = Tokenizer.from_file(str(path / models["whole"].manifest.model_for("score").tokenizer))
    counter.no_truncation()
    text = " ".join(r["output"] for r in json.loads(shared_file("corpora", "gpteacher_roleplay.json").read_text()))
    offsets = counter.encode(text[:4_000_000], add_special_tokens=False).offsets
    rows = []
    for length in LENGTHS:
        records = []
        for k in range(n):
            start = (k * 9973 * length) % (len(offsets) - length)
            answer = text[offsets[start][0] : offsets[start + length - 1][1]]
            records.append({"instruction": "Continue the story.", "output": answer})
        windows = float(np.mean([models["whole"].units(_record(r))[1] for r in records]))
        best = {name: float("inf") for name in models}
        for m in models.values():
            m.score_embed(records[:2])
        for _ in range(rounds):
            for name, m in models.items():
                t = time.perf_counter()
                m.score_embed(records)
                best[name] = min(best[name], time.perf_counter() - t)
        rows.append(
            {
                "tokens": length,
                "windows": round(windows, 2),
                "ms_per_record": round(best["whole"] / n * 1000, 2),
                "first_window_ms_per_record": round(best["first"] / n * 1000, 2),
            }
        )
        print(f"cost {path.name} {rows[-1]}", flush=True)
    return rows


def run(work: Path, quick: bool) -> dict:
    paths = bundles(work)
    out: dict = {
        "aggregates_default_fp32": aggregates(paths["default"]),
        "embedding_rules": {name: embedding_rules(path) for name, path in paths.items()},
        "pairs": {},
        "five_part": {},
        "cost": {},
    }
    for name, path in paths.items():
        for precision in ("fp32", "int8"):
            key = f"{name} {precision}"
            out["pairs"][key] = pairs_in_conversations(path, precision)
            out["five_part"][key] = five_part(path, precision, 60 if quick else 300)
            print(key, out["pairs"][key], out["five_part"][key], flush=True)
        out["cost"][f"{name} int8"] = cost(path, work, 8 if quick else 24, 1 if quick else 2)
    return out


def only_aggregates(work: Path, quick: bool) -> dict:
    """--aggregates: this measurement alone, merged into the section's last results."""
    result = json.loads((ROOT / "benchmarks" / "results" / "whole_records.json").read_text())
    keep = {k: v for k, v in result.items() if k not in ("command", "machine", "date")}
    paths = bundles(work)
    rules = {name: embedding_rules(path) for name, path in paths.items()}
    return {**keep, "aggregates_default_fp32": aggregates(paths["default"]), "embedding_rules": rules}


if __name__ == "__main__":
    import sys

    if "--aggregates" in sys.argv:
        sys.argv.remove("--aggregates")
        section_main("whole_records", only_aggregates, __doc__)
    else:
        section_main("whole_records", run, __doc__)
