"""The language guard: the share of a job's tokens a bundle's tokenizer cannot read, and the warning above the
limit, from the counting function up to the CLI's summary."""

import json

import pytest
from tokenizers import Tokenizer, models

from car_onnx.runtime.bundle import Bundle
from car_onnx.runtime.coverage import UNKNOWN_SHARE_LIMIT, Coverage, coverage_warning, unknown_id
from car_onnx.runtime.session import SessionConfig
from car_onnx.runtime.tokenization import tokenize
from car_onnx_export import tiny

KNOWN = "the answer is water"
FOREIGN = "水 是 生命 之 源"  # five words the tiny vocabulary lacks


def test_unknown_id_of_word_and_unigram_tokenizers(tmp_path):
    tiny.make_tokenizer(tmp_path / "t.json")
    assert unknown_id(Tokenizer.from_file(str(tmp_path / "t.json"))) == tiny.vocab()["[UNK]"] == 1
    unigram = Tokenizer(
        models.Unigram([("<s>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("a", -1.0)], unk_id=2, byte_fallback=False)
    )
    assert unknown_id(unigram) == 2
    assert unknown_id(Tokenizer(models.WordLevel({"a": 0}))) is None


def test_share_counts_text_tokens_only(tmp_path):
    """[CLS]/[SEP] are left out of the count: 5 unknown of 4 + 5 + 1 text tokens."""
    tiny.make_tokenizer(tmp_path / "t.json")
    tok = Tokenizer.from_file(str(tmp_path / "t.json"))
    tok.no_padding()
    ids = tokenize(tok, [KNOWN, FOREIGN, "water"]).ids
    cov = Coverage()
    cov.add(ids, unknown_id(tok), tok.num_special_tokens_to_add(False))
    assert (cov.unknown, cov.tokens) == (5, 10) and cov.share == 0.5
    none = Coverage()
    none.add(ids, None, 2)
    assert (none.unknown, none.tokens, none.share) == (0, 0, 0.0)


def test_warning_above_the_limit_only():
    at = Coverage(unknown=5, tokens=100)
    assert at.share == UNKNOWN_SHARE_LIMIT and coverage_warning("m", at) is None
    assert coverage_warning("m", Coverage(unknown=351, tokens=1000)) == (
        "model 'm' maps 35.1% of this job's 1000 tokens to its unknown token: it cannot read this data's language "
        "(for Chinese and 15 other languages build the multilingual bundle with `car-onnx export multilingual` and "
        "pass it with --bundle)"
    )


def test_model_counts_every_text_it_runs(tmp_path):
    bundle = Bundle(tiny.make_bundle(tmp_path / "b"), SessionConfig())
    records = [type("R", (), {"instruction": t, "input": "", "output": "water"})() for t in (KNOWN, FOREIGN)]
    bundle.run(records, ("score", "embed"))
    cov = bundle.model("score").coverage
    # "Instruction: T Input:  Response: water" -> instruction: T input: response: water: 1 + 4 + 3, 1 + 5 + 3 tokens
    assert (cov.unknown, cov.tokens) == (5, 8 + 9)


@pytest.mark.parametrize("words, warned", [(KNOWN, False), (FOREIGN, True)])
def test_cli_summary_warns_when_the_bundle_cannot_read_the_data(tmp_path, words, warned, cli):
    bundle = tiny.make_bundle(tmp_path / "b")
    data = tmp_path / "in.json"
    data.write_text(json.dumps([{"instruction": words, "input": "", "output": f"{words} {i}"} for i in range(8)]))
    code, _, err, _ = cli("score", data, "-o", tmp_path / "out.json", "-b", bundle)
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("car-onnx: warning:")]
    if warned:  # per record, truncated to 12 - 2 text tokens: instruction: + 5 unknown + input: response: + 2 unknown
        assert lines == [
            "car-onnx: warning: model 'joint' maps 70.0% of this job's 80 tokens to "
            "its unknown token: it cannot read this data's language (for Chinese and 15 other languages "
            "build the multilingual bundle with `car-onnx export multilingual` and pass it with --bundle)"
        ]
    else:
        assert lines == []
