"""Run every benchmark in bench/ and print their figures: `make bench` or `python -m bench`."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ["bench.bench_capacity", "bench.bench_engine", "bench.bench_sim", "bench.bench_streams",
              "bench.bench_admitter", "bench.bench_lag", "bench.bench_config_lag", "bench.bench_config_load"]


def main(names: list[str]) -> None:
    for name in names or BENCHMARKS:
        module = importlib.import_module(name if name.startswith("bench.") else f"bench.{name}")
        print(f"\n== {module.__name__} ==", flush=True)
        module.main()


if __name__ == "__main__":
    main(sys.argv[1:])
