"""Run every benchmark, one after another (never two at once: they would measure each
other), then print one summary table: each figure, its target, PASS or MISS.

    python bench/run_all.py [--quick]

Exits 1 only if a benchmark failed to run; a MISS is a result, not a failure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Figure, print_table  # noqa: E402

BENCHES = ["capture_overhead", "unique_index_writes", "initial_load", "change_drain", "stream", "latency", "sqlite_calls",
           "verify", "parity_finalize", "cutover_downtime", "reverse_stream", "fleet",
           "way_back_idle"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    args = ap.parse_args()
    started = time.monotonic()
    figures: list[Figure] = []
    failed, took = [], {}
    with tempfile.TemporaryDirectory(prefix="syncd-bench-all-") as tmp:
        for name in BENCHES:
            print(f"\n=== {name} ===", flush=True)
            report = Path(tmp) / f"{name}.json"
            t = time.monotonic()
            rc = subprocess.run([sys.executable, str(Path(__file__).parent / f"{name}.py"),
                                 *(["--quick"] if args.quick else []), "--report", str(report)]).returncode
            took[name] = time.monotonic() - t
            if rc != 0 or not report.exists():
                failed.append(name)
                continue
            figures.extend(Figure(**f) for f in json.loads(report.read_text()))

    rows = [[f.bench, f.name, f.shown(), f.target or "", f.verdict] for f in figures]
    rows += [[name, "(benchmark failed to run; see its output above)", "", "", "FAIL"] for name in failed]
    print_table("=== Summary" + (" (--quick: smaller sizes, indicative only)" if args.quick else "") + " ===",
                ["bench", "figure", "value", "target", "verdict"], rows)
    misses = sum(f.verdict == "MISS" for f in figures)
    print(f"\n{sum(f.verdict == 'PASS' for f in figures)} PASS, {misses} MISS, {len(failed)} failed; "
          f"took {time.monotonic() - started:.0f} s (" + ", ".join(f"{n} {s:.0f} s" for n, s in took.items()) + ")")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
