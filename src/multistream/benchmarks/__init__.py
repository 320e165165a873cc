"""Every benchmark of the library, one module per benchmark, all in this package.

* :mod:`~multistream.benchmarks.decode`: decode speed and KV memory against plain decoding;
  ``multistream bench decode [--json] [--context N]``.
* :mod:`~multistream.benchmarks.load_ws`: N concurrent WebSocket sessions on one server;
  ``python -m multistream.benchmarks.load_ws --sessions 1,4,16``.
* :mod:`~multistream.benchmarks.train_throughput`: training examples/s and tokens/s against the
  sequential twin; ``python benchmarks/train_throughput.py --recipe RECIPE --steps N`` (the
  top-level ``benchmarks/`` folder holds only this entry script, kept at the path issue 11 names).

Benchmarks live in the package (not in a top-level folder) so that ``multistream bench`` can
run them from an installed wheel, ruff and the import-graph test cover them, and they import the
library like any user would.
"""
