"""Benchmarks of the worker: its task runtime (`python -m bench.worker`) and its batch jobs
(`python -m bench.maintenance`). Not part of the test suite; see bench/README.md."""
