"""car-onnx benchmarks: scripts, not tests. Each writes JSON (and markdown) into benchmarks/results/."""
