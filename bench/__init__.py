"""Benchmarks of the project (run each as ``python -m bench.NAME`` from the repository root; all of them
with ``bash bench/run_all.sh``). Shared machinery lives in :mod:`bench.harness`. Importing the package
does nothing else."""
