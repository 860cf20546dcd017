"""File jobs: what `car-onnx select`, `score` and `embed` run, and their Python entry (the CLI calls these same
functions with the options objects it parsed):

    from car_onnx.jobs import Job, select
    select(Job(Path("data.jsonl")), car_onnx.load(), Path("out.jsonl"), options=SelectOptions.parse(n1="2%"))

`engine=car_onnx.ray.RayEngine(address)` runs the scan and the inference on a Ray cluster; the selection is the same."""

from .pipeline import CLUSTER_FIELD, SCORE_FIELD, Engine, LocalEngine, embed, score, select
from .scanning import Job
from .stages import RunSummary, Stages

__all__ = [
    "Job",
    "select",
    "score",
    "embed",
    "Engine",
    "LocalEngine",
    "Stages",
    "RunSummary",
    "SCORE_FIELD",
    "CLUSTER_FIELD",
]
