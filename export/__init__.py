"""car-onnx export tools (the `[export]` extra): IQS checkpoints and sentence-transformers models to ONNX bundles."""
