"""Whole records (runtime/reading.py): every exchange of a conversation, and a long answer in windows that each
carry the instruction; records that fit one window read exactly as before. References: the tiny model's numpy
forward pass (tiny.reference) on windows cut by hand (the tiny tokenizer: one token per word)."""

import json

import numpy as np
import pytest

import car_onnx
from car_onnx.runtime.reading import READING, RUN, said_in_place
from car_onnx_export import tiny

W = tiny.WORDS
SHORT = [{"instruction": W[i], "input": "", "output": f"{W[i + 1]} {W[i + 2]}"} for i in range(6)]


def long_answer(start: int, n: int) -> str:
    return " ".join(W[(start + k) % 60] for k in range(n))


def windows(instruction: str, answer: str, budget: int) -> list[tuple[str, int]]:
    """The window texts of a long answer, by hand: the prompt and `budget` words of the answer each."""
    words = answer.split()
    return [
        (tiny.TEMPLATE.render(instruction, "", " ".join(words[i : i + budget])), len(words[i : i + budget]))
        for i in range(0, len(words), budget)
    ]


def reference(instruction: str, answer: str, max_windows: int = 8) -> tuple[float, np.ndarray]:
    # [CLS] instruction: WORD input: response: [SEP] = 6 tokens of 12; 2 kept free at each cut: 4 answer words each
    parts = windows(instruction, answer, tiny.MAX_LENGTH - 6 - 2)[:max_windows]
    scores, vectors = tiny.reference([t for t, _ in parts])
    weights = np.array([n for _, n in parts], dtype=np.float64)
    vector = (weights[:, None] * vectors).sum(0) / weights.sum()
    return float((weights * scores).sum() / weights.sum()), vector / np.linalg.norm(vector)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("whole")
    return tiny.make_bundle(root / "before"), tiny.make_bundle(root / "windows", max_windows=8)


def test_records_that_fit_read_exactly_as_before(bundles):
    before, windows_ = bundles
    mixed = SHORT + [{"instruction": W[40], "input": "", "output": long_answer(3, 30)}] + SHORT[::-1]
    old = car_onnx.load(before, precision="fp32").score_embed(mixed)
    new = car_onnx.load(windows_, precision="fp32").score_embed(mixed)
    fits = [i for i, r in enumerate(mixed) if len(r["output"].split()) == 2]
    for a, b in zip(old, new):
        assert np.array_equal(a[fits], b[fits])  # bit for bit, long records batched alongside


def test_a_long_answer_is_read_in_windows_that_carry_the_instruction(bundles):
    before, windows_ = bundles
    answer = long_answer(5, 18)  # 5 windows of 4, 4, 4, 4, 2 words
    tail = answer.rsplit(" ", 1)[0] + " " + W[59]
    model, old = car_onnx.load(windows_, precision="fp32"), car_onnx.load(before, precision="fp32")
    scores, vectors = model.score_embed([{"instruction": W[7], "output": a} for a in (answer, tail)])
    for got, vector, a in zip(scores, vectors, (answer, tail)):
        want, want_vector = reference(W[7], a)
        assert got == pytest.approx(want, abs=1e-6)
        np.testing.assert_allclose(vector, want_vector, atol=1e-6)
    assert scores[0] != scores[1]  # the last word is read
    first = old.score([{"instruction": W[7], "output": a} for a in (answer, tail)])
    assert first[0] == first[1]  # a bundle without the reading rule reads the first 12 tokens alone


def test_max_windows_caps_what_is_read(tmp_path):
    bundle = tiny.make_bundle(tmp_path / "b", max_windows=2)
    answer = long_answer(9, 20)
    late = " ".join(answer.split()[:12] + [W[58]] * 8)  # the same first two windows (8 words)
    model = car_onnx.load(bundle, precision="fp32")
    got = model.score([{"instruction": W[3], "output": a} for a in (answer, late)])
    assert got[0] == got[1] == pytest.approx(reference(W[3], answer, max_windows=2)[0], abs=1e-6)


def test_each_window_carries_its_whole_answers_loops(tmp_path):
    plain = tiny.make_bundle(tmp_path / "plain", max_windows=8)
    reads = tiny.make_bundle(tmp_path / "loops", max_windows=8, loops=True)
    once = long_answer(5, 10)  # 3 windows: no window holds a whole copy of a loop of it
    records = SHORT + [{"instruction": W[7], "output": a} for a in (once, " ".join([once] * 3), once + " " + once)]
    base = car_onnx.load(plain, precision="fp32").score(records)
    got = car_onnx.load(reads, precision="fp32").score(records)
    assert np.array_equal(got[: len(SHORT)], base[: len(SHORT)])  # texts that fit are fed 0
    for i, record in enumerate(records[len(SHORT) :], start=len(SHORT)):
        words = record["output"].split()  # one token per word
        runs = [tuple(words[k : k + RUN]) for k in range(len(words) - RUN + 1)]
        share = sum(t in runs[:k] for k, t in enumerate(runs)) / len(runs)
        assert got[i] == pytest.approx(base[i] + share, abs=1e-6)  # every window gets its whole answer's share
    assert got[len(SHORT)] == base[len(SHORT)]  # no run repeated
    assert got[-2] - base[-2] == pytest.approx(13 / 23) and got[-1] - base[-1] == pytest.approx(3 / 13)
    bad = tiny.make_bundle(tmp_path / "bad", loops=True)  # a graph reading answer_loops: its manifest must say so
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["models"][0]["inputs"] = ["input_ids", "attention_mask"]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(car_onnx.BundleError, match="the graph reads answer_loops, which the manifest's inputs"):
        car_onnx.load(bad, precision="fp32").score(SHORT)


def test_said_in_place_against_every_start_and_period(in_place_by_hand):
    """A part of 2 to 64 tokens with a word among them, said three times in a row: random texts over a small
    vocabulary (ids 0 and 1 are no words), some with a part planted two to four times, against every start tried."""
    rng = np.random.default_rng(0)
    words = np.arange(80) >= 2
    texts = []
    for _ in range(1500):
        text = list(rng.integers(0, 6, size=rng.integers(0, 30)))
        part = list(rng.integers(0, 80, size=rng.integers(1, 9)))
        at = int(rng.integers(0, len(text) + 1))
        texts.append(text[:at] + part * int(rng.integers(2, 5)) + text[at:])
    got = [said_in_place(t, words) for t in texts]
    assert got == [in_place_by_hand(t, words) for t in texts]
    assert 0.2 < np.mean(got) < 0.8
    distinct = list(range(2, 80))
    assert said_in_place(distinct[:64] * 3, words) and not said_in_place(distinct[:65] * 3, words)  # up to 64
    assert not said_in_place(distinct[:64] * 2 + distinct[:63], words)  # a third time cut short
    assert not said_in_place([0, 1] * 10, words) and said_in_place([0, 2] * 3, words)  # a part needs a word
    assert said_in_place([5] * 6, words) and not said_in_place([5] * 5, words)  # a word six times: twice three
    assert not said_in_place([], words) and not said_in_place([7], words)


def test_each_window_carries_whether_its_whole_answer_says_a_part_in_place(tmp_path):
    plain = tiny.make_bundle(tmp_path / "plain", max_windows=8)
    reads = tiny.make_bundle(tmp_path / "repeats", max_windows=8, repeats=True)
    said = f"{W[20]} {W[21]} {W[20]} {W[21]} {W[20]} {W[21]}"
    answers = [
        said,  # fits: its own answer says (20 21) three times
        f"{W[20]} {W[21]} {W[20]} {W[21]} {W[22]}",  # twice
        " ".join([W[9]] * 6),  # one word six times: (9 9) three times
        " ".join(["unknown", "words"] * 4),  # [UNK] eight times: no word
        said + " " + long_answer(5, 14),  # 5 windows of 4 words: none holds the part three times
        long_answer(5, 14) + " " + long_answer(5, 6),  # 5 windows, a long part twice (period over the window)
    ]
    records = SHORT + [{"instruction": W[7], "output": a} for a in answers]
    base = car_onnx.load(plain, precision="fp32").score(records)
    got = car_onnx.load(reads, precision="fp32").score(records)
    assert np.array_equal(got[: len(SHORT)], base[: len(SHORT)])
    np.testing.assert_allclose(got[len(SHORT) :] - base[len(SHORT) :], [1, 0, 1, 0, 1, 0], atol=1e-6)
    from car_onnx.runtime.bundle import Bundle
    from car_onnx.runtime.session import SessionConfig

    reader = Bundle(reads, SessionConfig(precision="fp32")).model("score").reader
    units = reader.units(type("R", (), {"instruction": W[7], "input": "", "output": answers[4]})())
    assert len(units) == 5 and [u.repeats for u in units] == [1.0] * 5  # every window takes its answer's


def conversation(*exchanges):
    turns = []
    for question, answer in exchanges:
        turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": turns}


def test_every_exchange_of_a_conversation_counts_and_turns_first_reads_the_first(bundles):
    _, bundle = bundles
    one, two = (W[10], f"{W[11]} {W[12]}"), (W[20], f"{W[21]} {W[22]} {W[23]}")
    alone = car_onnx.load(bundle, precision="fp32").score([{"instruction": q, "output": a} for q, a in (one, two)])
    both = car_onnx.load(bundle, precision="fp32").score([conversation(one, two)])
    assert both[0] == pytest.approx(alone.astype(np.float64).mean(), abs=1e-6)
    vectors = car_onnx.load(bundle, precision="fp32").embed([{"instruction": q, "output": a} for q, a in (one, two)])
    mean = vectors.astype(np.float64).mean(0)
    np.testing.assert_allclose(
        car_onnx.load(bundle, precision="fp32").embed([conversation(one, two)])[0],
        mean / np.linalg.norm(mean),
        atol=1e-6,
    )
    first = car_onnx.load(bundle, precision="fp32", turns="first").score([conversation(one, two)])
    assert first[0] == pytest.approx(alone[0], abs=1e-6)
    worse = car_onnx.load(bundle, precision="fp32").score([conversation(one, (W[20], W[50]))])
    assert worse[0] != both[0]  # the second exchange's answer moves the record's score


def test_conversations_differing_after_the_first_exchange_are_not_duplicates(bundles):
    _, bundle = bundles
    one = (W[10], f"{W[11]} {W[12]}")
    rows = [conversation(one, (W[20], W[21])), conversation(one, (W[20], W[22])), conversation(one, (W[20], W[21]))]
    sel = car_onnx.load(bundle, precision="fp32").select(rows, n1=3, n2=1)
    assert sel.duplicate_of.tolist() == [-1, -1, 0]
    sel = car_onnx.load(bundle, precision="fp32", turns="first").select(rows, n1=3, n2=1)
    assert sel.duplicate_of.tolist() == [-1, 0, 0]


def test_turns_is_checked():
    with pytest.raises(car_onnx.UsageError, match=r"^turns must be one of all, first, got 'last'$"):
        car_onnx.api.ModelOptions.parse(turns="last")


def test_a_long_prompt_without_an_answer_reads_its_first_window(bundles):
    before, windows_ = bundles
    record = [{"instruction": long_answer(2, 30), "output": ""}]
    want = car_onnx.load(before, precision="fp32").score_embed(record)
    for got, expected in zip(car_onnx.load(windows_, precision="fp32").score_embed(record), want):
        assert np.array_equal(got, expected)


def test_exchange_scores_are_what_the_record_score_averages(bundles):
    _, bundle = bundles
    model = car_onnx.load(bundle, precision="fp32")
    one, two = (W[10], f"{W[11]} {W[12]}"), (W[20], long_answer(21, 14))
    rows = [conversation(one, two), {"instruction": W[30], "output": W[31]}]
    per = model.exchange_scores(rows)
    assert [len(p) for p in per] == [2, 1]
    alone = model.score([{"instruction": q, "output": a} for q, a in (one, two)])
    np.testing.assert_allclose(per[0], alone, atol=1e-6)
    np.testing.assert_allclose(model.score(rows), [per[0].astype(np.float64).mean(), per[1][0]], atol=1e-6)
    assert [len(p) for p in car_onnx.load(bundle, turns="first").exchange_scores(rows)] == [1, 1]


def test_the_report_says_how_records_were_read(bundles, tmp_path):
    pytest.importorskip("matplotlib")
    from tests.test_report import block

    _, bundle = bundles
    one, two = (W[10], f"{W[11]} {W[12]}"), (W[20], long_answer(21, 14))  # 14 answer words: 4 windows
    rows = [conversation(one, two)] + [{"instruction": W[i], "output": f"{W[i + 1]} {W[i + 2]}"} for i in range(9)]
    car_onnx.load(bundle, precision="fp32").select(rows, n1=2).report(tmp_path / "r.html")
    assert block((tmp_path / "r.html").read_text(encoding="utf-8"))["reading"] == {
        "exchanges": 11,
        "records_with_several_exchanges": 1,
        "windows": 14,
        "records_read_in_several_windows": 1,
        "most_windows": 5,
    }


def test_a_work_dir_of_another_reading_is_not_reused(bundles, tmp_path, cli):
    _, bundle = bundles
    data = tmp_path / "conversations.jsonl"
    rows = [conversation((W[i], W[i + 1]), (W[i + 2], W[i + 3])) for i in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    work = tmp_path / "work"
    rc, _, err, _ = cli("score", data, "-o", tmp_path / "a.jsonl", "-b", bundle, "--work-dir", work)
    assert rc == 0, err
    rc, _, err, _ = cli("score", data, "-o", tmp_path / "b.jsonl", "-b", bundle, "--work-dir", work, "--turns", "first")
    assert rc == 0 and "option turns changed (all -> first)" in err and "reused" not in err, err
    job = json.loads((work / "job.json").read_text())
    del job["reading"], job["turns"]  # a work dir made before whole records were read
    (work / "job.json").write_text(json.dumps(job))
    rc, _, err, _ = cli("score", data, "-o", tmp_path / "c.jsonl", "-b", bundle, "--work-dir", work, "--turns", "first")
    assert rc == 0 and f"how records are read (car-onnx's version) changed (None -> {READING})" in err, err
    assert (tmp_path / "c.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_a_graph_reading_answer_window_is_told_which_texts_are_windows(tmp_path):
    """`answer_window`: 1 for each window after a longer answer's first, 0 for the first and for a text that fits
    (the default bundle's windows' term reads it); a text that is a record of its own and also a window of
    another answer runs twice."""
    plain = tiny.make_bundle(tmp_path / "plain", max_windows=8)
    reads = tiny.make_bundle(tmp_path / "window", max_windows=8, window=True)
    answer = long_answer(5, 18)  # 5 windows of 4, 4, 4, 4, 2 words
    second = " ".join(answer.split()[4:8])  # as a record of its own: the second window's text
    records = SHORT + [{"instruction": W[7], "output": a} for a in (answer, second)]
    model = car_onnx.load(reads, precision="fp32")
    base, got = car_onnx.load(plain, precision="fp32").score(records), model.score(records)
    assert np.array_equal(got[: len(SHORT)], base[: len(SHORT)]) and got[-1] == base[-1]  # texts that fit: 0
    assert got[-2] == pytest.approx(base[-2] + 10 * 14 / 18, abs=1e-5)  # the windows after the first (14 words): 1
    assert model.exchange_scores(records[-2:])[0][0] == pytest.approx(got[-2], abs=1e-6)
    bad = tiny.make_bundle(tmp_path / "bad", window=True)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["models"][0]["inputs"] = ["input_ids", "attention_mask"]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(car_onnx.BundleError, match="the graph reads answer_window, which the manifest's inputs"):
        car_onnx.load(bad, precision="fp32").score(SHORT)


def test_a_graph_reading_answer_open_is_told_which_windows_end_before_their_answer(tmp_path):
    """`answer_open`: 1 for each window that ends before its answer does (every window but the last, and the last
    read one where max_windows leaves the rest unread), 0 for the last window and for a text that fits (the
    multilingual bundle's end reader reads it: such a window is no cut answer)."""
    plain = tiny.make_bundle(tmp_path / "plain", max_windows=8)
    answer = long_answer(5, 18)  # 5 windows of 4, 4, 4, 4, 2 words
    records = SHORT + [{"instruction": W[7], "output": answer}]
    base = car_onnx.load(plain, precision="fp32").score(records)
    got = car_onnx.load(tiny.make_bundle(tmp_path / "open", max_windows=8, open=True), precision="fp32").score(records)
    assert np.array_equal(got[: len(SHORT)], base[: len(SHORT)])  # texts that fit: 0
    assert got[-1] == pytest.approx(base[-1] + 100 * 16 / 18, abs=1e-4)  # the first four windows (16 words): 1
    capped = car_onnx.load(tiny.make_bundle(tmp_path / "capped", max_windows=2, open=True), precision="fp32")
    first_two = car_onnx.load(tiny.make_bundle(tmp_path / "two", max_windows=2), precision="fp32")
    assert capped.score(records[-1:])[0] == pytest.approx(first_two.score(records[-1:])[0] + 100, abs=1e-4)  # both
