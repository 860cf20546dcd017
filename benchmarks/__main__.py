"""`python -m benchmarks` (or `make bench`): runs the benchmark suite and writes benchmarks/results/."""

from . import default_bundle

default_bundle.main([])
