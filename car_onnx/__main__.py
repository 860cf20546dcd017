"""`python -m car_onnx` is the `car-onnx` command."""

from .cli import main

main()
