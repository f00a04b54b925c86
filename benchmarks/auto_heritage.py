"""`transferlab auto` on Architectural Heritage against the default probe (issue targets:
a 20-minute budget reaches validation accuracy >= 0.97 and beats the paper's per-class F1 on
>= 9 of 10 classes; a 5-minute budget still beats the default probe; every budget holds
within +10%).

usage: .venv/bin/python benchmarks/auto_heritage.py [--budgets 20m,5m] [--data DIR] [--work DIR]
"""

from __future__ import annotations

import argparse

from _auto import auto, default_probe, section, workdir
from _common import BASELINE_DEFAULT, DATA_DEFAULT

from transferlab.pipelines.auto_plan import parse_budget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DATA_DEFAULT)
    parser.add_argument("--baseline", default=BASELINE_DEFAULT)
    parser.add_argument("--budgets", default="20m,5m")
    parser.add_argument("--work")
    parser.add_argument("--label", default="", help="write to a separate BENCHMARKS.md section with this suffix")
    args = parser.parse_args()
    work = workdir("tl-auto-heritage-") if args.work is None else __import__("pathlib").Path(args.work)
    probe = default_probe(args.data, work, args.baseline)
    runs = [(b, parse_budget(b), auto(args.data, work, b, args.baseline, b)) for b in args.budgets.split(",") if b]
    targets = ["targets: 20m: val accuracy >= 0.97 and paper F1 beaten on >= 9 of 10 classes; 5m: beats the "
               "default probe; every budget within +10%"]
    suffix = f"-{args.label}" if args.label else ""
    section("auto_heritage" + suffix, "transferlab auto: Architectural Heritage" + (f" ({args.label})" if args.label
                                                                                      else ""),
            [probe], runs, targets, "benchmarks/auto_heritage.py")


if __name__ == "__main__":
    main()
