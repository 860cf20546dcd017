"""Runtime: a bundle run on texts. The manifest (the contract with the export), the bundle (loaded and verified),
one ONNX graph (graph.OnnxModel), the session (device, provider options, precision), tokenization and batching, and
vocabulary coverage. Imports only the core."""
