"""Benchmark suite of the External Server (``python -m bench.run``); see bench/README.md."""
