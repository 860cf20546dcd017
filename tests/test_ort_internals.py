"""The export's uses of onnx's and onnxruntime's private APIs (export/ort_internals.py) are all there, and the
check names what moved when one is not."""

from onnx import external_data_helper
from onnxruntime.quantization import onnx_quantizer

from car_onnx_export import ort_internals


def test_the_private_apis_the_export_uses_are_there():
    assert ort_internals.check() == []


def test_the_check_names_what_moved(monkeypatch):
    monkeypatch.delattr(external_data_helper, "_get_all_tensors")

    class Quantizer:  # a newer signature
        def __init__(self, model, per_channel, reduce_range, mode, static, weight_qType, activation_qType,
                     tensors_range, nodes_to_quantize, nodes_to_exclude, op_types_to_quantize, extra_options,
                     calibrate_method):  # fmt: skip
            pass

    monkeypatch.setattr(onnx_quantizer, "ONNXQuantizer", Quantizer)
    assert ort_internals.check() == [
        "onnx.external_data_helper._get_all_tensors is gone",
        f"ONNXQuantizer.__init__ takes {ort_internals.QUANTIZER_PARAMETERS + ('calibrate_method',)}, not "
        f"{ort_internals.QUANTIZER_PARAMETERS}",
    ]
