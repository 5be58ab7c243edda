"""The speed benchmark: `python -m backprop_bench.bench` (see __main__.py, docs/benchmark.md).

peak (the machine's matmul limit), cells (the grid and the timed rounds), report (figures,
goals, markdown), stock (each framework's own idiom, the yardstick). Importing the package
imports no framework.
"""
