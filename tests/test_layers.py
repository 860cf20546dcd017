"""The runtime's written interfaces: both engines implement pipeline.Engine."""

from car_onnx import pipeline
from car_onnx.ray import RayEngine


def test_both_engines_implement_the_engine_interface():
    for engine in (pipeline.LocalEngine(), RayEngine()):
        assert isinstance(engine, pipeline.Engine)
    assert {"scan", "infer", "rows"} <= set(dir(pipeline.Engine))
