"""car-onnx: CaR instruction-data selection (quality ranking + embedding clustering) on onnxruntime."""

__version__ = "0.1.0"

from .errors import BundleError, CarError, InputError, UsageError  # noqa: E402
from .selection import Selection, car_select  # noqa: E402

__all__ = ["car_select", "Selection", "CarError", "InputError", "BundleError", "UsageError", "__version__"]
