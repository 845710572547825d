"""`make bench`: every benchmark once, each writing its JSON into benchmarks/results/.

The search benchmark at 1M vectors is left out (an hour and 11 GB of cached data on 2 cores);
run it by hand as benchmarks/README.md shows. `--smoke` runs the seconds-long versions only.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

FULL = [
    ["bench_indexing.py"],
    ["bench_search.py", "--n", "100000", "--reuse"],
    ["bench_milvus.py"],
    ["bench_server_latency.py"],
    ["bench_server_load.py"],
    ["bench_query_decoding.py"],
    ["bench_photo_formats.py"],
    ["bench_concepts.py"],
]
# Every benchmark has a seconds-long --smoke version that writes no results (tests/test_benchmarks.py runs each).
SMOKE = [[path.name, "--smoke"] for path in sorted(HERE.glob("bench_*.py"))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    failed = 0
    for script, *options in SMOKE if args.smoke else FULL:
        started = time.perf_counter()
        print(f"== {script} {' '.join(options)}", flush=True)
        result = subprocess.run([sys.executable, str(HERE / script), *options], check=False)
        print(f"== {script}: exit {result.returncode} after {time.perf_counter() - started:.0f} s", flush=True)
        failed += result.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
