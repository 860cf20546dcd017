"""Every use of onnx's and onnxruntime's private or unstable APIs, in one place.

The export keeps big models' weights in their files while onnxruntime's fusions and quantiser work, and writes
exactly the files onnx and onnxruntime would write; their public functions cannot do that, so it reaches into:
onnx's external-data helpers (which tensors a save writes, in its order), onnxruntime's dynamic quantiser
(`ONNXQuantizer`, built as `quantize_dynamic` builds it, and its shape-inference round trip, replaced) and the
working directory (onnx resolves a tensor's external file against it). Tested with the versions in TESTED, which
the `[export]` extra caps; `check()` (run by tests/test_ort_internals.py) fails loudly, naming what moved, when a
newer onnx or onnxruntime changes one of them.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from pathlib import Path

import onnx
from onnx import external_data_helper

TESTED = {"onnx": "1.23.2", "onnxruntime": "1.32.0"}
# onnxruntime.quantization.onnx_quantizer.ONNXQuantizer.__init__'s parameters, as quantize_dynamic passes them
QUANTIZER_PARAMETERS = ("model", "per_channel", "reduce_range", "mode", "static", "weight_qType", "activation_qType",
                        "tensors_range", "nodes_to_quantize", "nodes_to_exclude", "op_types_to_quantize",
                        "extra_options")  # fmt: skip


def tensors_in_save_order(model: onnx.ModelProto, attributes: bool):
    """The tensors onnx.save_model writes to external data, in its order: the initializers, or (`attributes`, as
    its convert_attribute) every tensor, attributes included."""
    if attributes:
        return external_data_helper._get_all_tensors(model)
    return external_data_helper._get_initializer_tensors(model)


@contextlib.contextmanager
def working_directory(folder: Path | None):
    """Runs the block in `folder` (None: where it is): onnx reads a tensor left in its external file relative to the
    working directory when onnxruntime's fusions or quantiser ask for its values."""
    if folder is None:
        yield
        return
    old = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


@contextlib.contextmanager
def shapes_without_weights():
    """In the block, onnxruntime's dynamic quantizer infers shapes from the graph alone: by default it writes the model
    with all its weights to a temporary folder and loads it back (shapes inferred on the way), which holds every
    weight in memory, twice, and cannot follow weights left in their files. Only the graph changes on that trip."""
    from onnxruntime.quantization import onnx_quantizer
    from onnxruntime.quantization.quant_utils import add_infer_metadata

    def infer(model: onnx.ModelProto) -> onnx.ModelProto:
        inferred = onnx.shape_inference.infer_shapes(model)
        add_infer_metadata(inferred)
        return inferred

    real = onnx_quantizer.save_and_reload_model_with_shape_infer
    onnx_quantizer.save_and_reload_model_with_shape_infer = infer
    try:
        yield
    finally:
        onnx_quantizer.save_and_reload_model_with_shape_infer = real


def dynamic_quantizer(model: onnx.ModelProto, exclude: list[str], ops: list[str]):
    """onnxruntime's quantiser as quantize_dynamic builds it for int8 weights (per channel, reduced range) and uint8
    activations, with the model prepared as quantize_dynamic prepares it (metadata, opset)."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.quant_utils import QuantizationMode, add_infer_metadata, update_opset_version

    add_infer_metadata(model)
    model = update_opset_version(model, QuantType.QInt8)
    return ONNXQuantizer(
        model,
        per_channel=True,
        reduce_range=True,
        mode=QuantizationMode.IntegerOps,
        static=False,
        weight_qType=QuantType.QInt8,
        activation_qType=QuantType.QUInt8,
        tensors_range=None,
        nodes_to_quantize=[],
        nodes_to_exclude=list(exclude),
        op_types_to_quantize=ops,
        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def check() -> list[str]:
    """What of the above is gone or changed in the installed onnx and onnxruntime (empty when all is there)."""
    from onnxruntime.quantization import onnx_quantizer, quant_utils

    problems = []
    for owner, name in ((external_data_helper, "_get_all_tensors"), (external_data_helper, "_get_initializer_tensors"),
                        (onnx_quantizer, "save_and_reload_model_with_shape_infer"), (quant_utils, "add_infer_metadata"),
                        (quant_utils, "update_opset_version"), (onnx_quantizer, "ONNXQuantizer")):  # fmt: skip
        if not callable(getattr(owner, name, None)):
            problems.append(f"{owner.__name__}.{name} is gone")
    quantizer = getattr(onnx_quantizer, "ONNXQuantizer", None)
    if quantizer is not None:
        got = tuple(p for p in inspect.signature(quantizer.__init__).parameters if p != "self")
        if got != QUANTIZER_PARAMETERS:
            problems.append(f"ONNXQuantizer.__init__ takes {got}, not {QUANTIZER_PARAMETERS}")
    return problems
