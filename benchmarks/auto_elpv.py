"""`transferlab auto` on elpv (the embedded demo data) against the default probe (issue target:
a 10-minute budget is at least 5 points above the default probe in accuracy and macro F1).

usage: .venv/bin/python benchmarks/auto_elpv.py [--budgets 10m] [--work DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _auto import auto, default_probe, section, workdir

from transferlab.data.demo import prepare_elpv_folder
from transferlab.pipelines.auto_plan import parse_budget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", default="10m")
    parser.add_argument("--work")
    args = parser.parse_args()
    work = workdir("tl-auto-elpv-") if args.work is None else Path(args.work)
    data = str(prepare_elpv_folder(work / "elpv"))
    probe = default_probe(data, work, None)
    runs = [(b, parse_budget(b), auto(data, work, b, None, b)) for b in args.budgets.split(",") if b]
    targets = ["target: 10m: accuracy and macro F1 at least 5 points above the default probe; within +10%"]
    section("auto_elpv", "transferlab auto: elpv (demo data)", probe, runs, targets, "benchmarks/auto_elpv.py")


if __name__ == "__main__":
    main()
