"""The runtime's written interfaces and the direction of its imports."""

import ast
from pathlib import Path

from car_onnx import pipeline
from car_onnx.ray import RayEngine, _ChunksOnCluster, _SampledRows
from car_onnx.rows import ArrayRows, Rows, rows_of
from car_onnx.workdir import ChunkRows

PACKAGE = Path(__file__).resolve().parents[1] / "car_onnx"


def test_both_engines_implement_the_engine_interface():
    for engine in (pipeline.LocalEngine(), RayEngine()):
        assert isinstance(engine, pipeline.Engine)
    assert {"scan", "infer", "rows"} <= set(dir(pipeline.Engine))


def test_every_row_source_is_a_rows():
    assert all(issubclass(c, Rows) for c in (ArrayRows, ChunkRows, _ChunksOnCluster, _SampledRows))
    x = list(range(10))
    assert isinstance(rows_of(x), ArrayRows) and rows_of(rows_of(x)).array is x


def top_level_imports(path: Path) -> set[str]:
    """The car_onnx modules `path` imports when it is imported (imports inside functions come later)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
    return found


def test_module_imports_form_no_cycle():
    graph = {p.stem: top_level_imports(p) & {q.stem for q in PACKAGE.glob("*.py")} for p in PACKAGE.glob("*.py")}
    done, path = set(), []

    def visit(name):
        assert name not in path, f"import cycle: {' -> '.join(path[path.index(name) :] + [name])}"
        if name in done:
            return
        path.append(name)
        for dep in sorted(graph[name]):
            visit(dep)
        path.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
    # the core (the selection and what it reads rows through) imports no input or output format
    below, todo = set(), ["selection"]
    while todo:
        for dep in graph[todo.pop()] - below:
            below.add(dep)
            todo.append(dep)
    assert {"clustering", "rows", "columns"} <= below
    assert not below & {"readers", "records", "writers", "pipeline", "model", "cli"}, sorted(below)
