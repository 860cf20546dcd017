"""Readers and writers: every format, field mapping, conversations, located errors, atomic writes; plus
property-based tests over hostile bytes and arbitrary strings."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from car_onnx.errors import InputError, UsageError
from car_onnx.io import FieldMap, detect_format, iter_records, open_writer

ROWS = [{"instruction": "Say hi", "input": "", "output": "Hi!", "id": 1},
        {"instruction": "Add", "input": "1 + 2", "output": "3", "id": 2}]


def write(path, fmt, rows):
    with open_writer(path, fmt) as w:
        for r in rows:
            w.write(r)


def test_json_and_jsonl_bytes(tmp_path):
    write(tmp_path / "a.json", "json", ROWS[:1])
    assert (tmp_path / "a.json").read_bytes() == (
        b'[\n  {\n    "instruction": "Say hi",\n    "input": "",\n    "output": "Hi!",\n    "id": 1\n  }\n]\n')
    write(tmp_path / "a.jsonl", "jsonl", [{"instruction": "é", "output": "\n"}])
    assert (tmp_path / "a.jsonl").read_bytes() == '{"instruction": "é", "output": "\\n"}\n'.encode()
    write(tmp_path / "e.json", "json", [])
    assert json.loads((tmp_path / "e.json").read_text()) == []


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "parquet"])
def test_round_trip(tmp_path, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    rows = [{k: (str(v) if fmt == "csv" else v) for k, v in r.items()} for r in ROWS]
    write(tmp_path / f"d.{fmt}", fmt, rows)
    recs = list(iter_records(tmp_path / f"d.{fmt}"))
    assert [r.row for r in recs] == rows
    assert [(r.instruction, r.input, r.output) for r in recs] == [("Say hi", "", "Hi!"), ("Add", "1 + 2", "3")]
    assert [r.index for r in recs] == [0, 1]


def test_field_mapping_and_missing_input(tmp_path):
    (tmp_path / "q.jsonl").write_text('{"question": "q", "answer": "a"}\n{"question": "q2", "answer": "a2", "ctx": null}\n')
    fields = FieldMap.parse(["instruction=question", "output=answer", "input=ctx"])
    recs = list(iter_records(tmp_path / "q.jsonl", fields=fields))
    assert [(r.instruction, r.input, r.output, r.where) for r in recs] == [("q", "", "a", "line 1"), ("q2", "", "a2", "line 2")]
    with pytest.raises(UsageError, match="--field takes KEY=NAME"):
        FieldMap.parse(["answer"])


def test_conversations(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                          {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "More"}]},
            {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}]
    (tmp_path / "c.json").write_text(json.dumps(rows))
    recs = list(iter_records(tmp_path / "c.json"))
    assert [(r.instruction, r.input, r.output) for r in recs] == [("Hi?", "Be brief.", "Hello."), ("Q", "", "A")]
    (tmp_path / "bad.json").write_text(json.dumps([{"messages": [{"role": "user", "content": "Q"}]}]))
    with pytest.raises(InputError) as e:
        list(iter_records(tmp_path / "bad.json"))
    assert str(e.value) == (f"{tmp_path / 'bad.json'}: record 1: field 'messages': conversation has no assistant "
                            "reply after the first user turn")


@pytest.mark.parametrize("name,content,message", [
    ("x.json", b'[{"instruction": "a", "output": NaN}]', "invalid JSON: NaN is not valid JSON"),
    ("x.json", b'{"instruction": "a"}', "expected a JSON array of records, got object"),
    ("x.jsonl", b'{"instruction": "a", "output": "b"}\n[1]\n', "line 2: expected a JSON object, got array"),
    ("x.jsonl", b'{"instruction": "a", "output": Infinity}\n', "line 1: invalid JSON: Infinity is not valid JSON"),
    ("x.jsonl", b'{"instruction": "a", "output": "b"\n', "line 1: invalid JSON: Expecting ',' delimiter (column 35)"),
    ("x.csv", b"instruction,output\na,b\n\xff,c\n", "line 3: invalid UTF-8 (byte 0xff)"),
    ("x.jsonl", b'{"instruction": ["a"], "output": "b"}\n', "line 1: field 'instruction': expected a string, got array"),
    ("x.jsonl", b'{"instruction": "a", "output": true}\n', "line 1: field 'output': expected a string, got boolean"),
    ("x.csv", b"", "no records"),
])
def test_located_errors(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError) as e:
        list(iter_records(tmp_path / name))
    assert str(e.value) == f"{tmp_path / name}: {message}"


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(UsageError, match=r"cannot tell the format from the suffix .* pass --format"):
        detect_format(tmp_path / "d.txt")
    with pytest.raises(InputError, match=r"nope\.json: no such file$"):
        list(iter_records(tmp_path / "nope.json"))


def test_failed_writer_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with open_writer(tmp_path / "out.jsonl", "jsonl") as w:
            w.write(ROWS[0])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_duplicates_and_empty_strings_are_kept(tmp_path):
    row = {"instruction": "", "output": ""}
    (tmp_path / "d.jsonl").write_text((json.dumps(row) + "\n") * 3)
    assert len(list(iter_records(tmp_path / "d.jsonl"))) == 3


text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.fixed_dictionaries({"instruction": text, "input": text, "output": text}), min_size=1, max_size=5),
       fmt=st.sampled_from(["json", "jsonl", "csv"]))
def test_any_strings_round_trip(tmp_path, rows, fmt):
    path = tmp_path / f"h.{fmt}"
    path.unlink(missing_ok=True)
    write(path, fmt, rows)
    assert [r.row for r in iter_records(path)] == rows


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=200),
                      st.lists(st.sampled_from([b'{"instruction": "a", "output": "b"}', b"\xff", b"{", b"NaN", b"[]",
                                                b'{"instruction": 1}', b"\x00", b"", b'"x"']), max_size=6)
                      .map(b"\n".join)),
       suffix=st.sampled_from([".json", ".jsonl", ".csv"]))
def test_hostile_bytes_parse_or_raise_located_input_error(tmp_path, data, suffix):
    path = tmp_path / f"f{suffix}"
    path.write_bytes(data)
    try:
        list(iter_records(path))
    except InputError as err:
        assert str(err).startswith(f"{path}: ") and "\n" not in str(err)
