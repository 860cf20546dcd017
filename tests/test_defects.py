"""Defects: the corruptions (car_onnx.core.defects), the response mask that lets a scorer read the answer apart from the
instruction, and `car-onnx eval` (car_onnx.evaluate), on tiny bundles built here."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from car_onnx import BundleError, load
from car_onnx.core.defects import BOILERPLATE, KINDS, REFUSALS, RESTATE, corrupt, nearest_other
from car_onnx.evaluate import Text, defect_table, parse_text, read_pairs
from car_onnx.runtime.manifest import ModelSpec, Template, Variant
from car_onnx.runtime.tokenization import load_tokenizer, tokenize
from car_onnx_export import tiny

SAMPLE = Path(__file__).resolve().parents[1] / "car_onnx" / "data" / "sample.json"
EXPERT = Template(
    "Instruction: {instruction} Input: {input} Response: {output}", "Instruction: {instruction} Response: {output}"
)


def sample():
    return [Text(r["instruction"], r["input"], r["output"]) for r in json.loads(SAMPLE.read_text())]


def test_each_kind_of_corruption_is_what_its_name_says():
    records = sample()
    found = corrupt(records, foreign=["这是另一种语言的回答。"])
    by_kind = {k: [c for c in found if c.kind == k] for k in KINDS}
    assert all(by_kind[k] for k in KINDS), {k: len(v) for k, v in by_kind.items()}
    for c in found:
        real = records[c.index].output
        assert c.output.strip() != real.strip()
        words = real.split()
        if c.kind == "echo":
            assert c.output == records[c.index].instruction
        elif c.kind == "echo_input":
            r = records[c.index]
            assert r.input and c.output == (r.input if c.index % 2 else f"{r.instruction}\n{r.input}")
        elif c.kind == "restate":
            assert records[c.index].instruction[1:] in c.output
        elif c.kind == "loop_whole":
            assert c.output == "\n\n".join([real] * 3)
        elif c.kind.startswith("cut_"):
            assert real.startswith(c.output) and len(c.output.split()) < len(words) and len(words) >= 12
            if c.kind == "cut_quarter":
                assert len(c.output.split()) == max(1, len(words) // 4)
        elif c.kind == "loop_paragraph":
            assert len(c.output) > len(real) and set(c.output.split()) == set(words)
        elif c.kind == "loop_ngram":
            out = c.output.split()  # the answer's first words, then a 2- to 5-gram repeated at least 4 times
            assert any(
                len(out) >= 4 * n and all(out[-k] == out[-k - n] for k in range(1, 3 * n + 1)) for n in range(2, 6)
            )
            assert " ".join(words).startswith(" ".join(out[: len(words) * 3 // 10]))
        elif c.kind in ("other_random", "other_near"):
            assert c.output in [r.output for r in records]
        elif c.kind == "foreign":
            assert c.output == "这是另一种语言的回答。"
        elif c.kind == "empty":
            assert c.output == ""
        elif c.kind == "boilerplate":
            assert c.output in BOILERPLATE["eval"]
        elif c.kind == "refuse_part":  # its first parts kept, then one refusal per part replaced
            kept = [p for p in REFUSALS["eval"] if p in c.output]
            assert len(kept) == 1, c.output
            head = c.output[: c.output.index(kept[0])].rstrip(" -*0123456789.)\n")
            assert head and real.startswith(head) and len(head) < len(real)
    assert corrupt(records, seed=3) == corrupt(records, seed=3) != corrupt(records, seed=4)
    assert "foreign" not in {c.kind for c in corrupt(records)}  # nothing to lend: the kind is left out


def test_training_and_measuring_phrases_are_disjoint():
    for table in (BOILERPLATE, RESTATE, REFUSALS):
        assert not set(table["train"]) & set(table["eval"])
    train = {c.output for c in corrupt(sample(), ("boilerplate",), phrases="train")}
    assert train and train <= set(BOILERPLATE["train"])
    assert "I don't know." not in REFUSALS["train"] + REFUSALS["eval"]  # what benchmarks/whole_records measures


def test_a_partly_refused_answer_keeps_its_first_parts_and_list_markers():
    listed = Text(
        "List four fruits.", "", "1. Apple is red.\n2. Banana is yellow.\n3. Cherry is small.\n4. Grape is sweet."
    )
    found = corrupt([listed], ("refuse_part",), seed=1, phrases="train")
    lines = found[0].output.split("\n")
    refused = [line for line in lines if line[3:] in REFUSALS["train"]]
    assert 1 <= len(refused) <= 2 and lines[: 4 - len(refused)] == listed.output.split("\n")[: 4 - len(refused)]
    assert [line[:3] for line in lines] == ["1. ", "2. ", "3. ", "4. "]
    assert corrupt([Text("Say hi.", "", "Hi there, nice to meet you.")], ("refuse_part",)) == []  # too short


def test_the_near_answer_is_the_nearest_other_instructions_by_tfidf():
    from sklearn.feature_extraction.text import TfidfVectorizer

    instructions = [
        "bake a chocolate cake",
        "bake a lemon cake",
        "fix a flat bike tyre",
        "fix a bike chain",
        "bake a lemon cake",
    ]
    outputs = ["A", "B", "C", "D", "B"]
    near = nearest_other(instructions, outputs)
    x = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit_transform(instructions).toarray()
    for i, j in enumerate(near):
        allowed = [k for k in range(5) if outputs[k] != outputs[i]]
        assert j == max(allowed, key=lambda k: (x[i] @ x[k], -k))
    assert list(near) == [1, 0, 3, 2, 0]  # the lemon cake's twin (same answer) is never its own "other"


def test_template_gives_where_the_response_starts():
    for instruction, input in (("Say hi", ""), ("Translate", "chat")):
        text = EXPERT.render(instruction, input, "OUT")
        assert text[EXPERT.response_start(instruction, input) :] == "OUT"
    assert not Template("{instruction} {output} {output}").splits_output()
    spec = dict(
        name="m",
        roles=("score",),
        tokenizer="t.json",
        max_length=8,
        pad_id=0,
        outputs={"score": "s"},
        variants={"fp32": Variant("m.onnx")},
        inputs=("input_ids", "attention_mask", "response_mask"),
    )
    with pytest.raises(BundleError, match="a model reading response_mask needs {output} exactly once in its template"):
        ModelSpec(template=Template("{instruction}"), **spec)
    ModelSpec(template=EXPERT, **spec)


def test_response_mask_marks_the_answers_tokens(tmp_path):
    tiny.make_tokenizer(tmp_path / "tok.json")
    tok = load_tokenizer(tmp_path / "tok.json", 12)
    t = tiny.TEMPLATE
    records = [("explain it", "", "the answer is long"), ("give a word", "water", ""), ("list", "", "one two " * 9)]
    texts = [t.render(*r) for r in records]
    tokens = tokenize(tok, texts, [t.response_start(a, b) for a, b, _ in records])
    # [CLS] instruction: <instruction words> input: <input words> response: <output words> [SEP], cut at 12 tokens
    for (instruction, input, output), ids, response in zip(records, tokens.ids, tokens.response):
        before = 1 + 1 + len(instruction.split()) + 1 + len(input.split()) + 1
        n_out = min(len(output.split()), 12 - 1 - before)
        assert list(response) == [0] * before + [1] * n_out + [0] * (len(ids) - before - n_out)


def test_a_scorer_reading_the_response_gets_its_mask_in_any_batch(tmp_path):
    bundle = tiny.make_bundle(tmp_path / "b", response=True)
    records = [
        {"instruction": "explain it", "input": "", "output": "the answer is long"},
        {"instruction": "give a word", "input": "water", "output": ""},
        {"instruction": "list", "input": "", "output": "one two " * 9},
        {"instruction": "the answer", "input": "", "output": "the answer"},  # prompt words again
        {"instruction": "explain it", "input": "the answer is long", "output": "it"},
    ]
    ref = tiny.response_reference([(r["instruction"], r["input"], r["output"]) for r in records])
    assert np.std(ref) > 0.01 and ref[1] == 0.0
    for max_tokens in (12, 64):
        got = load(bundle, precision="fp32", max_tokens=max_tokens).score(records)
        np.testing.assert_allclose(got, ref, atol=1e-5)
    # the same text split at another place is another input, not a duplicate run once
    same_text = [{"instruction": "a b", "input": "", "output": "c"}, {"instruction": "a", "input": "", "output": "b c"}]
    got = load(bundle, precision="fp32").score(same_text)
    np.testing.assert_allclose(got, tiny.response_reference([("a b", "", "c"), ("a", "", "b c")]), atol=1e-5)


def write_pairs(path: Path, rows: list[tuple[str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["src", "score"])
        for better, worse in rows:
            w.writerows([[worse, 0], [better, 1]])


def test_pairs_are_read_back_into_records_of_the_template(tmp_path):
    rows = [
        (EXPERT.render("Say hi", "", "Hello there."), EXPERT.render("Say hi", "", "hi")),
        (EXPERT.render("Sum", "2 and 2", "4"), EXPERT.render("Sum", "2 and 2", "5 Response: no")),
    ]
    write_pairs(tmp_path / "p.csv", rows)
    better, worse = read_pairs(tmp_path / "p.csv", EXPERT)
    assert better == [Text("Say hi", "", "Hello there."), Text("Sum", "2 and 2", "4")]
    assert worse == [Text("Say hi", "", "hi"), Text("Sum", "2 and 2", "5 Response: no")]
    assert parse_text(EXPERT, "Question: what?") is None
    write_pairs(tmp_path / "bad.csv", rows + [("Question: what?", EXPERT.render("a", "", "b"))])
    from car_onnx import InputError

    with pytest.raises(
        InputError, match=r"bad.csv: line 7: field 'src': the text does not follow the bundle's template"
    ):
        read_pairs(tmp_path / "bad.csv", EXPERT)


def test_eval_prints_agreement_and_the_defect_table_against_a_numpy_reference(tmp_path, cli):
    bundle = tiny.make_bundle(tmp_path / "b", response=True)
    records = [
        ("explain it", "", "the answer is long and you can see it in the water"),
        ("give a word", "", "water is one word that you can use"),
        ("list", "", "one two " * 8),
        ("make a look", "", "look at the way the people write it"),
    ]
    pairs = [(tiny.TEMPLATE.render(a, b, c), tiny.TEMPLATE.render(a, b, c.split()[0])) for a, b, c in records]
    write_pairs(tmp_path / "pairs.csv", pairs)
    (tmp_path / "recs.json").write_text(json.dumps([dict(zip(("instruction", "input", "output"), r)) for r in records]))
    rc, out, err, heavy = cli(
        "eval",
        bundle,
        "--pairs",
        tmp_path / "pairs.csv",
        "--records",
        tmp_path / "recs.json",
        "--precision",
        "fp32",
        "--json",
    )
    assert rc == 0, err
    assert heavy == []
    result = json.loads(out)
    ref = tiny.response_reference(records)
    short = tiny.response_reference([(a, b, c.split()[0]) for a, b, c in records])
    assert result["pairs"] == {
        "file": str(tmp_path / "pairs.csv"),
        "pairs": 4,
        "agreement": float((ref > short).mean()),
    }
    broken = corrupt([Text(*r) for r in records], phrases="eval")
    bad = tiny.response_reference([records[c.index][:2] + (c.output,) for c in broken])
    for kind, row in result["defects"]["table"].items():
        mine = [(ref[c.index] > b) for c, b in zip(broken, bad) if c.kind == kind]
        assert row == {"records": len(mine), "preferred": pytest.approx(float(np.mean(mine)))}, kind
    assert set(result["defects"]["table"]) == {c.kind for c in broken}

    rc, out, err, _ = cli("eval", bundle, "--records", tmp_path / "recs.json", "--precision", "fp32")
    assert rc == 0, err
    assert "  kind             records  preferred" in out and "(foreign: not measured" in out

    rc, _, err, _ = cli("eval", bundle)
    assert (rc, err) == (2, "car-onnx: error: give --pairs and/or --records")


def test_defect_table_counts_a_tie_as_a_miss(tmp_path):
    bundle = tiny.make_bundle(tmp_path / "b", response=True)
    model = load(bundle, precision="fp32")
    # every word unknown to the tiny vocabulary: the real answer and its copies score alike where the response
    # is all [UNK]; an echo of an [UNK] instruction ties with it
    table = defect_table(
        model, [Text("zzz qqq", "", "yyy xxx www vvv uuu ttt sss rrr ppp ooo nnn mmm")], kinds=("echo",)
    )
    assert table == {"echo": {"records": 1, "preferred": 0.0}}


def test_loop_and_echo_rates_of_the_graph_match_a_plain_count():
    torch = pytest.importorskip("torch")
    from car_onnx_export.heads import trigram_rates

    rng = np.random.default_rng(0)
    ids = rng.integers(0, 4, size=(6, 30))  # a small vocabulary: many repeated trigrams
    response = np.zeros((6, 30))
    prompt = np.zeros((6, 30))
    for row, (p, r) in enumerate([(5, 20), (10, 10), (3, 0), (0, 25), (12, 2), (8, 22)]):
        prompt[row, :p], response[row, p : p + r] = 1, 1
    got = trigram_rates(torch.from_numpy(ids), torch.from_numpy(response).float(), torch.from_numpy(prompt).float())
    for row in range(6):
        resp = [tuple(ids[row, i : i + 3]) for i in range(28) if response[row, i : i + 3].all()]
        prom = {tuple(ids[row, i : i + 3]) for i in range(28) if prompt[row, i : i + 3].all()}
        loops = sum(t in resp[:k] for k, t in enumerate(resp))
        echoes = sum(t in prom for t in resp)
        n = max(len(resp), 1)
        np.testing.assert_allclose(got[row].numpy(), [loops / n, echoes / n], atol=1e-6)
    assert got[:, 0].max() > 0 and got[:, 1].max() > 0


@pytest.mark.parametrize("bits, low", [(15, 1), (17, 127_998)])
def test_the_graphs_repeated_runs_are_the_runtimes_count_of_the_response(bits, low):
    """heads.run_rate, in the graph, counts what runtime/reading.py's `repeated_runs` counts over a whole answer:
    runs of the response's tokens seen earlier in it (a run reaching into the prompt or the padding is not one);
    ids packed 4 to an integer (15 bits, the default bundle's) or 3 (17 bits: the multilingual vocabulary's
    largest ids)."""
    torch = pytest.importorskip("torch")
    from car_onnx.runtime.reading import repeated_runs
    from car_onnx_export.heads import run_rate

    rng = np.random.default_rng(1)
    ids = rng.integers(low, low + 2, size=(7, 40))  # two token ids: long runs repeat
    ids[0, 20:] = ids[0, 10:30]  # stretches of answers copied
    ids[1, 25:] = ids[1, :15]
    ids[5, 30:] = ids[5, 20:30]
    spans = [(10, 30), (0, 40), (5, 0), (35, 5), (2, 7), (20, 20), (0, 9)]  # (prompt tokens, response tokens)
    response = np.zeros((7, 40))
    for row, (p, r) in enumerate(spans):
        response[row, p : p + r] = 1
    got = run_rate(torch.from_numpy(ids), torch.from_numpy(response).float(), 8, bits).numpy()
    want = [repeated_runs(ids[row, p : p + r].tolist(), 8) for row, (p, r) in enumerate(spans)]
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got[0] > 0.1 and got[2] == 0 and len({round(float(v), 4) for v in got}) > 3


def test_runs_are_counted_only_where_four_token_ids_pack_into_one_integer():
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from car_onnx_export.default import JointModel

    def tiny(vocab):
        cfg = transformers.BertConfig(
            vocab, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8
        )
        return transformers.BertModel(cfg, add_pooling_layer=False)

    assert JointModel(tiny(32767), None, runs=8).runs == 8
    with pytest.raises(ValueError, match="repeated runs are counted for vocabularies below 32768 token ids"):
        JointModel(tiny(32768), None, runs=8)


def test_the_refusal_reader_matches_a_plain_segment_by_segment_reading():
    """Each response is cut at the closing tokens (the token kept with the segment it closes); per level, the
    largest cosine of a segment's mean with the prototype and the largest centred projection, 0 without a
    response: against a loop over the segments."""
    torch = pytest.importorskip("torch")
    from car_onnx_export.heads import RefusalReader

    rng = np.random.default_rng(1)
    ends = [7, 9]
    ids = rng.integers(0, 12, size=(5, 24))
    response = np.zeros((5, 24))
    for row, (p, r) in enumerate([(4, 15), (6, 18), (3, 0), (0, 24), (10, 1)]):
        response[row, p : p + r] = 1
    levels = [rng.normal(size=(5, 24, 6)) for _ in range(2)]
    reader = RefusalReader(ends, 2, 6)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    proto, center, direction = (
        unit(rng.normal(size=(2, 6))),
        rng.normal(size=(2, 6)) * 0.1,
        unit(rng.normal(size=(2, 6))),
    )
    reader.prototype[:], reader.center[:], reader.direction[:] = (
        torch.from_numpy(x).float() for x in (proto, center, direction)
    )
    got = reader(
        [torch.from_numpy(h).float() for h in levels], torch.from_numpy(ids), torch.from_numpy(response).float()
    )
    for row in range(5):
        where = np.flatnonzero(response[row])
        segments, current = [], []
        for t in where:
            current.append(t)
            if ids[row, t] in ends:
                segments.append(current)
                current = []
        segments += [current] if current else []
        want = []
        for k, h in enumerate(levels):
            means = [unit(h[row, seg].mean(0)) for seg in segments]
            want += (
                [max(m @ proto[k] for m in means), max((m - center[k]) @ direction[k] for m in means)]
                if means
                else [0, 0]
            )
        np.testing.assert_allclose(got[row].numpy(), want, atol=1e-5)


def test_the_refusal_reader_fits_the_shrunk_discriminant_direction():
    """`fit` from sums: the prototype is the refusals' unit mean, the centre the real segments' mean, the direction
    the mean difference through the real segments' covariance shrunk towards its mean variance (scikit-learn's
    ShrunkCovariance as the reference); where the real segments vary most along the mean difference, that direction
    tells refusals apart where the difference alone does not."""
    torch = pytest.importorskip("torch")
    from sklearn.covariance import ShrunkCovariance

    from car_onnx_export.heads import RefusalReader

    rng = np.random.default_rng(3)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    scale = np.array([3.0, 0.5, 1.0, 1.0, 1.0, 1.0])  # real segments spread along the first axis
    real = rng.normal(size=(400, 6)) * scale
    refused = rng.normal(size=(60, 6)) * 0.05 + [1.0, 2.0, 0, 0, 0, 0]
    sums = ([torch.from_numpy(real.sum(0))], [torch.from_numpy(real.T @ real)], [len(real)])
    reader = RefusalReader([7], 1, 6)
    reader.fit([torch.from_numpy(refused).float()], sums, shrink=0.1)
    cov = ShrunkCovariance(shrinkage=0.1).fit(real).covariance_
    want = unit(np.linalg.solve(cov, refused.mean(0) - real.mean(0)))
    np.testing.assert_allclose(reader.direction[0].numpy(), want, atol=1e-5)
    np.testing.assert_allclose(reader.center[0].numpy(), real.mean(0), atol=1e-6)
    np.testing.assert_allclose(reader.prototype[0].numpy(), unit(refused.mean(0)), atol=1e-6)

    def told_apart(direction):  # refusals above the real segments' 98th percentile, on fresh draws
        fresh_real = rng.normal(size=(2000, 6)) * scale
        fresh_refused = rng.normal(size=(200, 6)) * 0.05 + [1.0, 2.0, 0, 0, 0, 0]
        line = np.quantile((fresh_real - real.mean(0)) @ direction, 0.98)
        return np.mean((fresh_refused - real.mean(0)) @ direction > line)

    assert told_apart(want) > 0.9
    assert told_apart(unit(refused.mean(0) - real.mean(0))) < 0.5


def test_the_end_reader_projects_the_mean_of_the_responses_last_tokens():
    """Per level, the centred projection of the unit mean of the response's last END_TOKENS token states (all of a
    shorter response's); 0 for an empty response and where `answer_open` is 1: against a plain loop."""
    torch = pytest.importorskip("torch")
    from car_onnx_export.heads import END_TOKENS, EndReader

    rng = np.random.default_rng(5)
    response = np.zeros((5, 20))
    for row, (p, r) in enumerate([(4, 12), (6, 2), (3, 0), (0, 20), (10, 7)]):
        response[row, p : p + r] = 1
    levels = [rng.normal(size=(5, 20, 6)) for _ in range(2)]
    reader = EndReader(2, 6)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    center, direction = rng.normal(size=(2, 6)) * 0.1, unit(rng.normal(size=(2, 6)))
    reader.center[:], reader.direction[:] = torch.from_numpy(center).float(), torch.from_numpy(direction).float()
    states = [torch.from_numpy(h).float() for h in levels]
    opened = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0])
    got, closed = (reader(states, torch.from_numpy(response).float(), o) for o in (opened, None))
    for row in range(5):
        last = np.flatnonzero(response[row])[-END_TOKENS:]
        want = [
            (unit(h[row, last].mean(0)) - center[k]) @ direction[k] if len(last) else 0 for k, h in enumerate(levels)
        ]
        np.testing.assert_allclose(closed[row].numpy(), want, atol=1e-5)
        np.testing.assert_allclose(got[row].numpy(), [0, 0] if row == 3 else want, atol=1e-5)
    assert closed[3].abs().min() > 0  # the open window's own reading is not 0


def test_the_end_reader_fits_the_shrunk_discriminant_direction():
    """`fit` on the cut copies' and the real answers' vectors: the centre is the real ones' mean, the direction
    their mean difference through the real ones' covariance shrunk as the refusal reader's (scikit-learn's
    ShrunkCovariance as the reference)."""
    torch = pytest.importorskip("torch")
    from sklearn.covariance import ShrunkCovariance

    from car_onnx_export.heads import EndReader

    rng = np.random.default_rng(4)
    real = rng.normal(size=(300, 6)) * [2.0, 0.5, 1, 1, 1, 1]
    cut = rng.normal(size=(50, 6)) * 0.1 + [0.5, 1.0, 0, 0, 0, 0]
    reader = EndReader(1, 6)
    reader.fit([torch.from_numpy(cut).float()], [torch.from_numpy(real).float()], shrink=0.1)
    cov = ShrunkCovariance(shrinkage=0.1).fit(real.astype(np.float32).astype(np.float64)).covariance_
    want = np.linalg.solve(cov, cut.astype(np.float32).mean(0) - real.mean(0))
    np.testing.assert_allclose(reader.direction[0].numpy(), want / np.linalg.norm(want), atol=1e-5)
    np.testing.assert_allclose(reader.center[0].numpy(), real.mean(0), atol=1e-5)


def test_the_end_reader_reads_its_table_at_the_responses_last_token():
    """With a vocabulary, one number more: the table's entry for the response's last token (0 for an empty response
    and an open window); `fit_odds` against a plain count."""
    torch = pytest.importorskip("torch")
    from car_onnx_export.heads import ODDS_MIN, ODDS_SCALE, EndReader

    rng = np.random.default_rng(7)
    ids = rng.integers(0, 12, size=(4, 9))
    response = np.zeros((4, 9))
    for row, (p, r) in enumerate([(2, 5), (3, 0), (1, 8), (4, 3)]):
        response[row, p : p + r] = 1
    reader = EndReader(1, 3, vocab=12)
    reader.odds[:] = torch.from_numpy(rng.normal(size=12)).float()
    states = [torch.from_numpy(rng.normal(size=(4, 9, 3))).float()]
    got = reader(states, torch.from_numpy(response).float(), torch.tensor([0.0, 0, 0, 1]), torch.from_numpy(ids))
    assert got.shape == (4, 2) and reader.outputs() == 2
    for row, want in enumerate([ids[0, 6], None, ids[2, 8], None]):
        assert float(got[row, 1]) == (0 if want is None else pytest.approx(float(reader.odds[want])))

    answers = [list(rng.integers(0, 12, size=int(rng.integers(1, 30)))) for _ in range(40)]
    answers[:3] = [a + [12] for a in answers[:3]]  # a token seen 3 times (at answers' ends), one never (13)
    ends, tokens = np.zeros(14), np.zeros(14)
    for answer in answers:
        ends[answer[-1]] += 1
        for t in answer:
            tokens[t] += 1
    reader = EndReader(1, 3, vocab=14)
    reader.fit_odds(torch.from_numpy(ends), torch.from_numpy(tokens))
    for t in range(14):
        ratio = np.log((ends[t] + 1) / len(answers)) - np.log((tokens[t] + 1) / sum(map(len, answers)))
        want = ratio / ODDS_SCALE if tokens[t] >= ODDS_MIN else 0.0
        assert float(reader.odds[t]) == pytest.approx(want, abs=1e-6)
    assert (tokens < ODDS_MIN).any() and (tokens >= ODDS_MIN).any()


def test_plain_pairs_put_each_real_answer_without_its_full_stop_above_its_cut_copies():
    """--end-plain: `unpunctuated` takes off the . ! ? that end a text (and the space after them); `_plain_pairs`
    gives each fitting copy cut mid-sentence, and each held-apart copy cut mid-sentence or after a sentence, the
    text of its record's answer without it (records whose answer ends otherwise have none), kinds named apart there."""
    pytest.importorskip("torch")
    from car_onnx_export.train import _plain_pairs, unpunctuated

    cases = {"Paris.": "Paris", "Really?! \n": "Really", "Pi is 3.14": "Pi is 3.14", "Done...": "Done", "": ""}
    assert {text: unpunctuated(text) for text in cases} == cases
    plain = {0: 100, 2: 102}  # records 0 and 2 end with a full stop; record 1 does not
    owner = np.array([0, 0, 1, 2, 2, 2, 0])
    kinds = np.array(["cut_half", "echo", "cut_half", "cut_quarter", "cut_sentence", "cut_half", "cut_sentence"])
    bad = np.arange(50, 57)
    in_fit = np.array([True, True, True, True, True, False, False])
    got = _plain_pairs(plain, owner, bad, kinds, in_fit)
    assert got["fit"]["real"].tolist() == [100, 102] and got["fit"]["bad"].tolist() == [50, 53]
    assert got["fit"]["kind"].tolist() == ["cut_half", "cut_quarter"]
    assert got["choose"]["real"].tolist() == [102, 100] and got["choose"]["bad"].tolist() == [55, 56]
    assert got["choose"]["kind"].tolist() == ["cut_half, unpunctuated", "cut_sentence, unpunctuated"]


def test_prompt_recall_is_the_mean_best_response_cosine_of_the_prompts_tokens():
    """Per level, each prompt token's (the first, [CLS], left out; pad positions out) highest cosine with a response
    token, averaged over the prompt; 0 for an empty response: against a plain loop."""
    torch = pytest.importorskip("torch")
    from car_onnx_export.heads import prompt_recall

    rng = np.random.default_rng(6)
    mask, response = np.zeros((4, 12)), np.zeros((4, 12))
    for row, (p, r) in enumerate([(4, 6), (3, 1), (5, 0), (9, 3)]):
        mask[row, : p + r + 1] = 1  # [CLS] + prompt tokens, the response, a closing token
        response[row, p : p + r] = 1
    levels = [rng.normal(size=(4, 12, 5)) for _ in range(2)]
    got = prompt_recall(
        [torch.from_numpy(h).float() for h in levels], torch.from_numpy(mask), torch.from_numpy(response).float()
    )
    unit = lambda x: x / np.linalg.norm(x)  # noqa: E731
    for row in range(4):
        prompt = [t for t in range(1, 12) if mask[row, t] and not response[row, t]]
        answer = np.flatnonzero(response[row])
        for k, h in enumerate(levels):
            want = (
                np.mean([max(unit(h[row, t]) @ unit(h[row, a]) for a in answer) for t in prompt]) if len(answer) else 0
            )
            assert got[row, k].item() == pytest.approx(want, abs=1e-5)
    assert got[0].abs().min() > 0


def test_a_graph_reading_the_response_mask_must_say_so_in_the_manifest(tmp_path):
    bundle = tiny.make_bundle(tmp_path / "b", response=True)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["models"][0]["inputs"] = ["input_ids", "attention_mask"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="the graph reads response_mask, which the manifest's inputs do not list"):
        load(bundle, precision="fp32").score([{"instruction": "a", "output": "b"}])


def test_a_defect_term_saved_before_members_loads_as_one_member(tmp_path):
    """Heads trained by an earlier car-onnx name their one network `net`: they load and score as they did."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    from car_onnx_export.default import load_defects

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)
    )
    net[4].bias.data.fill_(0.5)  # penalties, not the zeros below P = 1/2
    state = {f"defects.net.{k}": v for k, v in net.state_dict().items()} | {"defects.scale": torch.tensor(2.0)}
    save_file(state, str(tmp_path / "head.safetensors"))
    part = load_defects(tmp_path / "head.safetensors", {"defects": {"features": 5, "hidden": 8, "scale": 2.0}})
    x = torch.rand(16, 5)
    with torch.no_grad():
        want = -2.0 * torch.relu(torch.tanh(net(x * 4 - 2).squeeze(-1) / 2))  # the term as it was written then
        np.testing.assert_allclose(part(x).numpy(), want.numpy(), atol=1e-6)
    assert (want < 0).any() and want.std() > 0.01  # the comparison is not between constants


N_TEXTS = 400  # expert texts (better, worse pairs), then one corrupted copy of each better text


def separable_term(monkeypatch, part_class=None, members=1, columns=None):
    """A defect term of `members` networks (of class `part_class`, by default DefectPart; reading the features
    `columns`, by default all) on separable texts: the first N_TEXTS real, low on feature 0, the rest copies, high;
    returns a function that trains it and gives its term on every text and the metrics."""
    torch = pytest.importorskip("torch")
    from car_onnx_export import train

    monkeypatch.setitem(train.DEFECTS, "members", members)
    monkeypatch.setitem(train.DEFECTS, "epochs", 20)
    monkeypatch.setitem(train.DEFECTS, "batch", 32)
    if part_class is not None:
        monkeypatch.setattr(train, "DefectPart", part_class)
    rng = np.random.default_rng(0)
    n = N_TEXTS
    q = np.concatenate([rng.normal(0.6, 0.3, n // 2), rng.normal(0.4, 0.3, n // 2), rng.normal(0.5, 0.3, n // 2)])
    q = q.astype(np.float32)
    feats = rng.uniform(0, 1, size=(len(q), 4)).astype(np.float32)
    feats[:n, 0], feats[n:, 0] = rng.uniform(0, 0.45, n), rng.uniform(0.55, 1, n // 2)
    split = {"fit": np.arange(0, 160), "choose": np.arange(160, n // 2)}
    expert = {k: {"better": rows, "worse": rows + n // 2} for k, rows in split.items()}
    defect = {k: {"real": rows, "bad": rows + n, "kind": np.array(["echo"] * len(rows))} for k, rows in split.items()}

    def term():
        part, metrics = train.fit_defects(
            q, feats, expert, defect, seed=0, long=None, columns=columns, log=lambda s: None
        )
        with torch.no_grad():
            return part(torch.from_numpy(feats)).numpy(), metrics

    return term


def test_the_defect_term_is_held_at_zero_on_real_texts(monkeypatch):
    """Trained on pairs (a real text above its corrupted copy), the term penalises the copies and leaves the real
    texts' scores where the quality head put them: each member's epoch is one that moves at most `move_bound` of the
    choose split's expert texts by more than `move_at`."""
    term, metrics = separable_term(monkeypatch, members=2)()  # skips without torch
    from car_onnx_export import train

    n = N_TEXTS
    assert metrics["choose_moved"] <= train.DEFECTS["move_bound"]
    assert (np.abs(term[:n]) > train.DEFECTS["move_at"]).mean() <= 0.02  # the real texts keep their scores
    assert metrics["choose_defects"]["echo"] > 0.85 and term[n:].mean() < -0.25  # the copies lose theirs


def test_a_term_reads_only_its_columns(monkeypatch):
    """A term given `columns` (the refusal term: the refusal reader's numbers) reads those features alone: trained
    where the copies differ from the real texts only in feature 0, it learns them with feature 0 among its columns
    and cannot without it; and its output is that of the same networks on those columns."""
    torch = pytest.importorskip("torch")
    from car_onnx_export.heads import DefectPart

    seeing, metrics = separable_term(monkeypatch, columns=[0, 2])()
    assert metrics["choose_defects"]["echo"] > 0.85 and seeing[N_TEXTS:].mean() < -0.25
    blind, metrics = separable_term(monkeypatch, columns=[1, 2, 3])()
    assert metrics["choose_defects"]["echo"] < 0.75  # the columns hold nothing that tells the copies apart
    torch.manual_seed(0)
    part = DefectPart(2, 8, 2.0, 2, columns=[3, 1]).eval()
    alone = DefectPart(2, 8, 2.0, 2).eval()
    alone.load_state_dict(part.state_dict())
    x = torch.rand(16, 5)
    with torch.no_grad():
        np.testing.assert_array_equal(part(x).numpy(), alone(x[:, [3, 1]]).numpy())
        assert part(x).std() > 0.01  # the comparison is not between constants


def test_long_answers_are_read_in_windows_as_the_runtime_reads_them(tmp_path):
    """Training's long answers (export/train.py): answers to several requests of the training records, each with a
    copy whose last parts are refused, read by the runtime's Reader; the pairs compared are the refused copy's last
    window and the complete answer's window at its place, and an answer's score is its windows' token-weighted mean."""
    pytest.importorskip("torch")
    from car_onnx.runtime.reading import Reader, Reading
    from car_onnx_export import train

    W = tiny.WORDS
    records = [Text(W[i], "", " ".join(W[(i + k) % 60] for k in range(1, 7))) for i in range(12)]
    records.append(Text(W[20], W[21], W[22]))  # with an input: lends no part
    pairs = train.long_answers(records, np.arange(13), per_record=2, seed=0)
    assert len(pairs) == 24
    for complete, refused in pairs:
        assert complete.instruction == refused.instruction and not complete.input
        asked = complete.instruction.split("\n")[1:]
        parts = complete.output.split("\n\n")
        assert 3 <= len(asked) == len(parts) <= 6
        for k, (request, part) in enumerate(zip(asked, parts), start=1):
            record = next(r for r in records if f"{k}. {r.instruction}" == request)
            assert part == f"{k}. {record.output}"  # each request answered in turn by its record's own answer
        kept = refused.output.split("\n\n")
        tail = [p for p, q in zip(kept, parts) if p != q]
        assert kept[: len(kept) - len(tail)] == parts[: len(parts) - len(tail)]
        assert 1 <= len(tail) <= len(parts) // 2 and len({p.split(". ", 1)[1] for p in tail}) == 1
        assert tail[0].split(". ", 1)[1] in REFUSALS["train"]
    tiny.make_tokenizer(tmp_path / "tok.json")
    tok = load_tokenizer(tmp_path / "tok.json", tiny.MAX_LENGTH)
    reader = Reader(tiny.TEMPLATE, tok, tiny.MAX_LENGTH, Reading(max_windows=64))
    units, index = train.read_long(pairs, reader, first=100)
    at = 100
    for g, pair in enumerate(pairs):
        read = [reader.units(t) for t in pair]
        assert [u.text for u in units[at - 100 : at - 100 + len(read[0]) + len(read[1])]] == [
            u.text for us in read for u in us
        ]
        assert len(read[0]) > 1  # longer than a window
        assert index["better"][g] == at + min(len(read[0]), len(read[1])) - 1
        assert index["worse"][g] == at + len(read[0]) + len(read[1]) - 1
        at += len(read[0]) + len(read[1])
    assert np.array_equal(index["units"], np.arange(100, at))
    assert np.array_equal(index["real"], index["units"][index["refused"] == 0])
    scores = np.zeros(at)
    scores[index["units"][index["refused"] == 1]] = -1.0
    assert train.long_preferred(scores, index) == 1.0
    scores = np.random.default_rng(0).normal(size=at)  # an answer's score: its windows' mean weighted by tokens
    w = index["tokens"]
    want = []
    for g in range(len(pairs)):
        mean = [
            (w * scores[index["units"]])[(index["owner"] == g) & (index["refused"] == r)].sum()
            / w[(index["owner"] == g) & (index["refused"] == r)].sum()
            for r in (0, 1)
        ]
        want.append(mean[0] > mean[1])
    assert train.long_preferred(scores, index) == pytest.approx(np.mean(want)) and 0 < np.mean(want) < 1


def test_the_defect_term_learns_long_answers_windows(monkeypatch):
    """With long answers' windows (`long`): the windows of the complete answers are held at zero and the refused
    copy's last window is penalised, so that the complete answer's token-weighted mean scores above its copy's; the
    windows read apart from the rest (here: high on a feature the record pairs never vary), which the record pairs
    alone leave unpenalised."""
    torch = pytest.importorskip("torch")
    from car_onnx_export import train

    monkeypatch.setitem(train.DEFECTS, "members", 1)
    monkeypatch.setitem(train.DEFECTS, "epochs", 20)
    monkeypatch.setitem(train.DEFECTS, "batch", 32)
    rng = np.random.default_rng(0)
    n, pairs, answers = 400, 200, 120  # expert texts, then one copy of each better text, then the windows
    q = rng.normal(0.5, 0.3, n + pairs + 6 * answers).astype(np.float32)
    feats = rng.uniform(0, 1, size=(len(q), 4)).astype(np.float32)
    feats[: n + pairs, 1] = 0.0  # the record texts: never high on the second feature
    feats[:n, 0] = rng.uniform(0, 0.45, n)
    feats[n : n + pairs, 0] = rng.uniform(0.55, 1, pairs)
    first = n + pairs  # each long answer: 3 complete windows, 3 of its copy (the last refused: high on feature 1)
    owner = np.repeat(np.arange(answers), 6)
    refused = np.tile([0, 0, 0, 1, 1, 1], answers)
    last = np.tile([0, 0, 0, 0, 0, 1], answers).astype(bool)
    units = first + np.arange(6 * answers)
    feats[units, 1] = np.where(last, rng.uniform(0.7, 1, len(units)), rng.uniform(0.2, 0.5, len(units)))
    for k in (1, 2):  # the copy's first windows are the complete answer's
        q[units[last] - k] = q[units[last] - k - 3]
        feats[units[last] - k] = feats[units[last] - k - 3]
    feats[units[last] - 3] = feats[units[last]]  # the complete answer's last window: its copy's, but not refused
    feats[units[last] - 3, 1] = rng.uniform(0.2, 0.5, answers)
    q[units[last] - 3] = q[units[last]]
    split = {"fit": np.arange(0, 160), "choose": np.arange(160, pairs)}
    expert = {k: {"better": rows, "worse": rows + pairs} for k, rows in split.items()}
    defect = {k: {"real": rows, "bad": rows + n, "kind": np.array(["echo"] * len(rows))} for k, rows in split.items()}

    def windows(keep):
        k = np.isin(owner, keep)
        return {
            "real": units[k & (refused == 0)],
            "better": units[k & last] - 3,
            "worse": units[k & last],
            "units": units[k],
            "owner": owner[k] - keep[0],
            "refused": refused[k],
            "tokens": np.tile([100.0, 100.0, 40.0, 100.0, 100.0, 40.0], answers)[k],
        }

    long = {"fit": windows(np.arange(0, 90)), "choose": windows(np.arange(90, answers))}
    results = {}
    for name, given in (("without", None), ("with", long)):
        part, metrics = train.fit_defects(q, feats, expert, defect, seed=0, long=given, log=lambda s: None)
        with torch.no_grad():
            term = part(torch.from_numpy(feats)).numpy()
        results[name] = train.long_preferred(q + term, long["choose"])
    assert metrics["choose_long_preferred"] == pytest.approx(results["with"], abs=1e-4)
    assert results["with"] > 0.95 > results["without"] + 0.2
    assert metrics["choose_long_windows_moved"] <= 0.05  # the complete answers' windows keep their scores
    assert metrics["choose_moved"] <= train.DEFECTS["move_bound"]


def test_a_member_that_starts_flat_on_every_text_is_revived(monkeypatch):
    """The penalty is flat at zero where a member's output is below zero: one that starts there on every text gets
    no gradient and would stay zero (tried below with the revival off); training raises its last bias first."""
    torch = pytest.importorskip("torch")
    from car_onnx_export import train
    from car_onnx_export.heads import DefectPart

    class Flat(DefectPart):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            with torch.no_grad():
                for net in self.nets:
                    net[-1].bias.fill_(-50.0)  # below zero on every text

    term = separable_term(monkeypatch, Flat)
    revived, metrics = term()
    assert metrics["choose_defects"]["echo"] > 0.85 and revived[N_TEXTS:].mean() < -0.25
    assert (np.abs(revived[:N_TEXTS]) > train.DEFECTS["move_at"]).mean() <= 0.02
    monkeypatch.setattr(train, "_revive", lambda part, feats: None)
    flat, _ = term()
    assert not flat.any()  # without it: no penalty anywhere, after every epoch


def test_a_member_that_dies_while_training_is_revived_after_its_epoch(monkeypatch):
    """A member can also fall below zero on every text during an epoch (two of three multilingual members did in
    their first): it is revived at the epoch's end and learns in the next ones."""
    torch = pytest.importorskip("torch")
    from car_onnx_export import train
    from car_onnx_export.heads import DefectPart

    class DiesInFirstEpoch(DefectPart):
        epochs = 0

        def train(self, mode=True):
            super().train(mode)
            if mode and self.epochs == 0:  # the first epoch starts: the member is dead from here on, unless revived
                with torch.no_grad():
                    for net in self.nets:
                        net[-1].bias.fill_(-50.0)
            self.epochs += mode
            return self

    term = separable_term(monkeypatch, DiesInFirstEpoch)
    revived, metrics = term()
    assert metrics["choose_defects"]["echo"] > 0.85 and revived[N_TEXTS:].mean() < -0.25
    assert metrics["epochs"][0] > 1
    revive = train._revive
    monkeypatch.setattr(train, "_revive", lambda part, feats: revive(part, feats) if part.epochs == 0 else None)
    flat, _ = term()
    assert not flat.any()  # revived before the first epoch only: dead after it, for good
