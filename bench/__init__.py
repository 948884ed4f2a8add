"""Coalition's benchmark runner: ``python -m bench`` (see docs/benchmarks.md).

Each figure of issue #6 and each baseline is one module; :mod:`bench.harness` is what they
share (server processes, scratch databases, timing, percentiles, the result type) and
:mod:`bench.cli` runs them, prints the table and writes the JSON.
"""
