"""car-onnx: CaR instruction-data selection (quality ranking + embedding clustering) on onnxruntime.

    model = car_onnx.load()                 # the default bundle; or load("my-bundle/", precision="fp32")
    scores = model.score(records)           # float32 [n]
    selection = model.select(records, n1="2%")
    subset = selection.take(records)        # the selected rows, in records' own container

Bundle builders (the export tool) also use `car_onnx.manifest` (the bundle contract), `car_onnx.models.OnnxModel`
(one graph run on texts) and `car_onnx.tokenization`."""

__version__ = "0.1.0"

from .bundle import default_bundle_dir  # noqa: E402
from .errors import BundleError, CarError, InputError, UsageError  # noqa: E402
from .model import Model, load  # noqa: E402
from .selection import Selection, Size, car_select  # noqa: E402

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
    "manifest",
    "models",
    "tokenization",
]
