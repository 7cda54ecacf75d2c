"""Benchmarks of lineage-lens (run each as ``python -m benchmarks.bench_<name>``)."""
