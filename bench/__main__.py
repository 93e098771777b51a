"""Run every benchmark in bench/ and print their figures: `make bench` or `python -m bench`.

`python -m bench NAME [NAME ...] [OPTIONS]` runs some: `bench_history`, or `history` for
bench/bench_history.py. Options (everything from the first argument starting with `-`) go to the named
benchmarks' `main(argv)`; only benchmarks that parse their own options take them
(`python -m bench history --quick`).
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ["bench.bench_capacity", "bench.bench_engine", "bench.bench_sim", "bench.bench_streams",
              "bench.bench_admitter", "bench.bench_lag", "bench.bench_config_lag", "bench.bench_config_load",
              "bench.bench_history"]
TAKES_ARGV = {"bench.bench_history"}  # main(argv): options parsed by the benchmark itself


def module_name(name: str) -> str:
    if name.startswith("bench."):
        return name
    return f"bench.{name}" if name.startswith("bench_") else f"bench.bench_{name}"


def main(args: list[str]) -> None:
    first_option = next((i for i, a in enumerate(args) if a.startswith("-")), len(args))
    names, options = [module_name(a) for a in args[:first_option]], args[first_option:]
    refusing = [n for n in names if n not in TAKES_ARGV]
    if options and (not names or refusing):
        raise SystemExit(f"options {' '.join(options)} need a benchmark that takes them ({', '.join(TAKES_ARGV)}); "
                         f"{', '.join(refusing) or 'none named'} does not")
    for name in names or BENCHMARKS:
        module = importlib.import_module(name)
        print(f"\n== {module.__name__} ==", flush=True)
        module.main(options) if name in TAKES_ARGV else module.main()


if __name__ == "__main__":
    main(sys.argv[1:])
