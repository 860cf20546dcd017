"""The `--n1 5%` selection test of the defects section with the kinds its table reads worst: 4,000 real records of
the shared corpora plus 100 donor records for each of the nearest other question's answer, cut mid-sentence, cut
after a sentence and last parts refused (each donor's copy of its kind where the kind applies; the nearest other
question among all 400 donors): the share of corrupted records among those selected, against the input's, for every
bundle of the defects section, fp32 and int8. A pairwise miss costs a selection only where the copy also ranks
among the best records; this measures that.

    python -m benchmarks.hard_selection [--work DIR] [--only BUNDLE ...]    (--quick changes nothing: the test is its
    4,400 records; --only measures the named bundles alone, into the committed result)
"""

from __future__ import annotations

from pathlib import Path

from car_onnx.core.defects import corrupt
from car_onnx.evaluate import Text

from .common import section_main
from .defects import BUNDLES, bundles, real_pool, selected, selections

KINDS = ("other_near", "cut_half", "cut_sentence", "refuse_part")


def hard_selection(model, records: list[Text], seed: int = 0) -> dict:
    real, donors = records[:4000], records[4000:4400]
    copies = []
    for k, kind in enumerate(KINDS):
        copies += [
            (Text(donors[c.index].instruction, donors[c.index].input, c.output), kind)
            for c in corrupt(donors, (kind,), seed=seed)
            if k * 100 <= c.index < (k + 1) * 100
        ]
    return selected(model, real, copies, KINDS, seed)


def run(work: Path, quick: bool, only: list[str] | None = None) -> dict:
    paths = {name: path for name, path in bundles(work).items() if not only or name in only}
    return {"kinds": list(KINDS), "selection_n1_5pct": selections(paths, real_pool(), hard_selection)}


if __name__ == "__main__":
    section_main("hard_selection", run, __doc__, bundles=BUNDLES)
