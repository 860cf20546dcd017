"""The record model: which fields hold a record's three texts, and how a row (a parsed JSON object, a CSV row, a
Python dict) becomes a Record, conversations included. Every bad row is an InputError naming the field."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import fields as dc_fields

from ..errors import InputError, UsageError

TYPE_NAMES = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "number",
    float: "number",
    type(None): "null",
}
# Per conversation field: the role and text keys of its turns, and role name -> role.
STYLES = {
    "messages": (
        "role",
        "content",
        {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool", "function": "tool"},
    ),
    "conversations": (
        "from",
        "value",
        {
            "system": "system",
            "human": "user",
            "user": "user",
            "gpt": "assistant",
            "assistant": "assistant",
            "tool": "tool",
            "function_call": "tool",
            "observation": "tool",
        },
    ),
}


@dataclass(frozen=True)
class FieldMap:
    """Which source fields hold the instruction, the input and the output."""

    instruction: str = "instruction"
    input: str = "input"
    output: str = "output"

    @classmethod
    def of(cls, fields=None) -> FieldMap:
        """From a FieldMap, a mapping {"instruction": "question", ...} or KEY=NAME strings (the --field option);
        each key at most once."""
        if fields is None or isinstance(fields, FieldMap):
            return fields or cls()
        names = [f.name for f in dc_fields(cls)]
        specs = (
            [f"{k}={v}" for k, v in fields.items()]
            if isinstance(fields, Mapping)
            else [fields]
            if isinstance(fields, str)
            else list(fields)
        )
        mapping = {}
        for spec in specs:
            key, sep, value = str(spec).partition("=")
            key = key.strip()
            if not sep or key not in names or not value:
                raise UsageError(f"{{field}} takes KEY=NAME with KEY one of {', '.join(names)}; got {spec!r}", "field")
            if key in mapping:
                raise UsageError(f"{{field}} {key} is given twice", "field")
            mapping[key] = value
        return cls(**mapping)


@dataclass(frozen=True)
class Record:
    """One input record: where it is (for messages), the original row (written back out) and its three texts."""

    index: int  # 0-based position in the input
    where: str  # "line 7" or "record 7"
    row: dict  # the original record, unchanged
    instruction: str  # the first (or only) exchange
    input: str
    output: str
    turns: tuple = ()  # a conversation's later exchanges, each (instruction, input, output)

    def exchanges(self, turns: str = "all") -> list[tuple[str, str, str]]:
        """(instruction, input, output) of each exchange: every one, or with turns="first" the first alone."""
        first = (self.instruction, self.input, self.output)
        return [first, *self.turns] if turns == "all" else [first]


def type_name(value) -> str:
    return TYPE_NAMES.get(type(value), type(value).__name__)


def printable(text: str) -> str:
    """A name taken from the data, escaped where needed so that a message stays one printable line."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def _conversation(path, where, row) -> list[tuple[str, str, str]]:
    """The exchanges of a conversation, each (instruction, input, output): the user turns since the last reply
    (joined by a newline), the system turn before the first user turn as the input ("" if none), and the assistant
    turns answering them (joined likewise). Tool turns and tool calls are context the scorer does not read; later
    system turns are not read either; a user turn left unanswered at the end has nothing to score."""
    key = "messages" if "messages" in row else "conversations"
    role_key, text_key, roles = STYLES[key]
    turns = row[key]
    if not isinstance(turns, list):
        raise InputError(path, where, f"expected an array of turns, got {type_name(turns)}", key)
    system, asked, answered, exchanges = None, [], [], []
    for n, turn in enumerate(turns, 1):
        if not isinstance(turn, dict):
            raise InputError(path, where, f"turn {n}: expected an object, got {type_name(turn)}", key)
        if role_key not in turn:
            raise InputError(path, where, f"turn {n}: missing '{role_key}'", key)
        if not isinstance(turn[role_key], str):
            raise InputError(
                path, where, f"turn {n}: '{role_key}': expected a string, got {type_name(turn[role_key])}", key
            )
        role = roles.get(turn[role_key])
        if role is None:
            raise InputError(
                path,
                where,
                f"turn {n}: unknown {role_key} '{printable(turn[role_key])}' (accepted: {', '.join(roles)})",
                key,
            )
        if role == "tool" or (role == "assistant" and turn.get(text_key) is None and "tool_calls" in turn):
            continue  # a tool's turn, or a call to one: context the scorer does not read
        if text_key not in turn:
            raise InputError(path, where, f"turn {n}: missing '{text_key}'", key)
        text = turn[text_key]
        if not isinstance(text, str):
            raise InputError(path, where, f"turn {n}: '{text_key}': expected a string, got {type_name(text)}", key)
        if role == "user":
            if answered:  # a new question: the exchange before it is complete
                exchanges.append(("\n".join(asked), system or "", "\n".join(answered)))
                asked, answered = [], []
            asked.append(text)
        elif role == "assistant" and asked:
            answered.append(text)
        elif role == "system" and not asked and not exchanges and system is None:
            system = text
    if answered:
        exchanges.append(("\n".join(asked), system or "", "\n".join(answered)))
    if not exchanges:
        missing = "no user turn" if not asked else "no assistant reply after the first user turn"
        raise InputError(path, where, f"conversation has {missing}", key)
    return exchanges


def make_record(path, index: int, where: str, row, fields: FieldMap) -> Record:
    """The Record of one row: its instruction, input and output fields (input missing or null is empty), or, when
    it holds `messages` / `conversations` instead, its first exchange with the later ones in `turns`."""
    if not isinstance(row, Mapping):
        raise InputError(path, where, f"expected a JSON object, got {type_name(row)}")
    if fields.instruction not in row and ("messages" in row or "conversations" in row):
        first, *more = _conversation(path, where, row)
        return Record(index, where, row, *first, turns=tuple(more))
    values = {}
    for role in ("instruction", "input", "output"):
        name = getattr(fields, role)
        value = row.get(name)
        if value is None and role == "input":
            value = ""
        elif name not in row:
            raise InputError(path, where, "missing field", name)
        elif not isinstance(value, str):
            raise InputError(path, where, f"expected a string, got {type_name(value)}", name)
        values[role] = value
    return Record(index, where, row, **values)
