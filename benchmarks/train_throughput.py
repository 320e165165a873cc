"""Training throughput, multi-stream vs its sequential twin: kept runnable at this path.

    python benchmarks/train_throughput.py --recipe recipes/blocks-solve.yaml --steps 6 --abba

The benchmark itself is :mod:`multistream.benchmarks.train_throughput`, with the library's
other benchmarks (one place, importable from an installed wheel).
"""

from multistream.benchmarks.train_throughput import main

if __name__ == "__main__":
    main()
