"""A bundle model ready to run: template, tokenizer and onnxruntime session of one precision."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import BundleError
from .coverage import Coverage, unknown_id
from .manifest import ModelSpec
from .reading import Reader
from .session import SessionConfig, create_session, machine_threads
from .tokenization import DEFAULT_MAX_TOKENS, Clipper, load_tokenizer, pad_batch, pad_rows, plan_batches, tokenize

# response_mask: 1 for the tokens of the record's output (see Template.response_start), for scorers that read the
# instruction and the response apart within one forward pass. answer_loops ([batch] float): for a window of a longer
# answer, the share of the whole answer's runs of 8 tokens seen earlier in it (reading.py), 0 for a text that fits.
# answer_window ([batch] float): 1 for a window after an answer's first (it starts mid-answer), else 0.
# answer_repeats ([batch] float): 1 where the text's whole answer says a part three times or more in a row
# (reading.said_in_place), else 0. answer_open ([batch] float): 1 for a window that ends before its answer does.
UNIT_INPUTS = {  # reading.Unit's
    "answer_loops": "loops",
    "answer_window": "window",
    "answer_repeats": "repeats",
    "answer_open": "open",
}
KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "response_mask", *UNIT_INPUTS)


class OnnxModel:
    """Runs one model of a bundle on texts; the feed is built from the graph's declared input names."""

    def __init__(self, spec: ModelSpec, root: Path, precision: str, config: SessionConfig | None = None):
        config = config or SessionConfig(device="cpu", threads=machine_threads())
        self.spec, self.precision = spec, precision
        self.graph = Path(root) / spec.variants[self.precision].graph
        self.tokenizer = load_tokenizer(Path(root) / spec.tokenizer, spec.max_length)
        self.unk_id, self.coverage = unknown_id(self.tokenizer), Coverage()  # unknown tokens of every text run
        self.clip = Clipper(self.tokenizer, spec.max_length)  # a giant field is cut before tokenizing
        self.reader = Reader(  # records -> texts
            spec.template, self.tokenizer, spec.max_length, spec.reading, repeats="answer_repeats" in spec.inputs
        )
        self.session, self.workers = create_session(self.graph, config), config.workers()
        self.input_names = [i.name for i in self.session.get_inputs()]
        unknown = [n for n in self.input_names if n not in KNOWN_INPUTS]
        if unknown:
            raise BundleError(f"{self.graph}: graph input(s) {unknown} are not among {list(KNOWN_INPUTS)}")
        for name in ("response_mask", *UNIT_INPUTS):
            if name in self.input_names and name not in spec.inputs:
                raise BundleError(f"{self.graph}: the graph reads {name}, which the manifest's inputs do not list")
        have = {o.name for o in self.session.get_outputs()}
        missing = [name for name in spec.outputs.values() if name not in have]
        if missing:
            raise BundleError(f"{self.graph}: the manifest names output(s) {missing}, the graph has {sorted(have)}")

    def text(self, instruction: str, input: str, output: str) -> str:
        return self.spec.template.render(instruction, input, output)

    @property
    def reads_response(self) -> bool:
        """Whether the graph reads the response apart from the prompt (then `run` needs each text's start)."""
        return "response_mask" in self.input_names

    @property
    def unit_inputs(self) -> tuple[str, ...]:
        """The UNIT_INPUTS the graph reads (then `run` takes them for each text)."""
        return tuple(n for n in UNIT_INPUTS if n in self.input_names)

    def response_start(self, instruction: str, input: str) -> int:
        return self.spec.template.response_start(instruction, input)

    def run(
        self,
        texts: list[str],
        roles: tuple[str, ...],
        max_tokens: int = DEFAULT_MAX_TOKENS,
        progress: Callable[[int], None] | None = None,
        starts: list[int] | None = None,
        units: dict[str, list[float]] | None = None,
    ) -> dict[str, np.ndarray]:
        """Scores ([n] float32) and/or embeddings ([n, dim] float32) in the order of `texts`; `starts`: where each
        text's response begins (characters), for a graph that reads the response apart; `units`: each text's value
        of the `unit_inputs` the graph reads (reading.Unit's loops, window, repeats and open; 0 for all where not
        given). int8 graphs quantise activations with one scale per batch (dynamic quantisation), so a text's result
        would depend on its batch neighbours: they run one text per batch (no padding; as fast on CPU)."""
        if self.reads_response and starts is None:
            raise BundleError(f"{self.graph}: the graph reads a response mask: run() needs each text's response start")
        names = [self.spec.outputs[r] for r in roles]
        tokens = tokenize(self.tokenizer, [self.clip(text) for text in texts], starts if self.reads_response else None)
        self.coverage.add(tokens.ids, self.unk_id, self.tokenizer.num_special_tokens_to_add(False))
        out: dict[str, np.ndarray] = {}

        def infer(batch: list[int]) -> list:
            ids, mask = pad_batch([tokens.ids[i] for i in batch], self.spec.pad_id)
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            if tokens.response is not None:
                feed["response_mask"] = pad_rows([tokens.response[i] for i in batch], 0)
            for name in self.unit_inputs:
                given = (units or {}).get(name)
                feed[name] = np.array([given[i] if given else 0.0 for i in batch], dtype=np.float32)
            return self.session.run(names, {n: feed[n] for n in self.input_names})

        batches = plan_batches(tokens.lengths, 1 if self.precision == "int8" else max_tokens)
        with ThreadPoolExecutor(self.workers) as pool:  # results come back in batch order, as they finish
            try:
                for batch, results in zip(batches, pool.map(infer, batches)):
                    for role, value in zip(roles, results):
                        value = np.asarray(value, dtype=np.float32).reshape(len(batch), -1)
                        if role not in out:
                            out[role] = np.empty((len(texts), value.shape[1]), dtype=np.float32)
                        out[role][batch] = value
                    if progress:
                        progress(len(batch))
            except BaseException:  # Ctrl-C, SIGTERM, an error: stop after the running batches, not the queued ones
                pool.shutdown(cancel_futures=True)
                raise
        if "score" in out:
            out["score"] = out["score"][:, 0]
        return out
