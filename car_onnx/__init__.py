"""car-onnx: CaR instruction-data selection (quality ranking + embedding clustering) on onnxruntime.

    model = car_onnx.load()                 # the default bundle; or load("my-bundle/", precision="fp32")
    scores = model.score(records)           # float32 [n]
    selection = model.select(records, n1="2%")
    subset = selection.take(records)        # the selected rows, in records' own container

Files (what `car-onnx select/score/embed` run): `car_onnx.jobs` (`Job`, `select`, `score`, `embed`). Bundle
builders (the export tool) also use `car_onnx.runtime`: `manifest` (the bundle contract), `graph.OnnxModel` (one
graph run on texts) and `tokenization`. The packages are layers (docs/architecture.md)."""

from .api import Model, Selection, load
from .core.selection import Size, car_select
from .errors import BundleError, CarError, InputError, UsageError
from .runtime.bundle import default_bundle_dir
from .version import __version__

__all__ = [
    "load",
    "Model",
    "Selection",
    "Size",
    "car_select",
    "default_bundle_dir",
    "CarError",
    "InputError",
    "BundleError",
    "UsageError",
    "__version__",
]
