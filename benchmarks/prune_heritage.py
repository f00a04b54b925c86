"""The prune curve on Architectural Heritage: tf_efficientnet_lite0 cut after several block groups.

Runs `transferlab prune DATA --recipe recipes/heritage-fast.yaml --keep blocks.3,blocks.4,blocks.5,blocks.6,neck`
(each cut fine-tuned with the fast recipe, its stages retargeted to the groups left; "neck"
keeps the whole backbone as the reference point) in a fresh folder, times the whole command,
and writes a section of BENCHMARKS.md: parameters, multiply-adds, median CPU latency at
batch 1 and 64, validation accuracy and the Pareto front of every cut, the wall time against
the 20-minute target, and whether a cut of at most 1M parameters keeps 0.90 validation accuracy.

usage: .venv/bin/python benchmarks/prune_heritage.py [--keep GROUPS] [--recipe FILE] [--out DIR]
       [--max-parameters 1000000] [--target-accuracy 0.90] [--max-minutes 20] [--label NAME]
       [--benchmarks-md FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import (
        BENCHMARKS_MD,
        DATA_DEFAULT,
        REPO_ROOT,
        command_line,
        machine_info,
        machine_line,
        md_table,
        now,
        update_section,
    )
else:
    from ._common import (
        BENCHMARKS_MD,
        DATA_DEFAULT,
        REPO_ROOT,
        command_line,
        machine_info,
        machine_line,
        md_table,
        now,
        update_section,
    )

KEEP_DEFAULT = "blocks.3,blocks.4,blocks.5,blocks.6,neck"
# The CLI's own entry point; importing the prune command module first makes it available
# whether or not the installed CLI package registers it already.
LAUNCH = "import transferlab.cli.prune_commands; from transferlab.cli import main; main()"


def run_prune(data: str, recipe: Path, keep: str, out: Path) -> dict:
    command = ["prune", data, "--recipe", str(recipe), "--keep", keep, "--out", str(out), "--quiet"]
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", LAUNCH, *command], check=True)
    wall = time.perf_counter() - started
    with open(out / "prune.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    state = json.loads((out / "prune.json").read_text(encoding="utf-8"))
    return {"wall": wall, "rows": rows, "state": state, "command": "transferlab " + " ".join(command)}


def _float(value: str) -> float | None:
    return float(value) if value not in ("", None) else None


def table(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        front = [name for key, name in (("pareto", "parameters"), ("pareto_latency", "latency")) if r[key] == "True"]
        lines.append([r["cut"] + (" (whole backbone)" if r["cut"] == "neck" else ""),
                      f"{int(r['parameters']):,}", f"{int(r['multiply_adds']) / 1e6:,.0f}",
                      f"{_float(r['latency_ms_batch1']):.1f}", f"{_float(r['latency_ms_batch64']):.0f}",
                      f"{_float(r['val_accuracy']):.4f}", f"{_float(r['val_macro_f1']):.4f}",
                      ", ".join(front) or "-", f"{_float(r['train_seconds']):.0f}"])
    return md_table(["cut after", "parameters", "MACs (M)", "ms batch 1", "ms batch 64", "val accuracy",
                     "val macro F1", "Pareto front (by)", "train s"], lines)


def verdicts(result: dict, max_parameters: int, target: float, max_minutes: float, fresh: bool) -> list[str]:
    small = [r for r in result["rows"] if int(r["parameters"]) <= max_parameters]
    best = max(small, key=lambda r: _float(r["val_accuracy"]) or 0.0, default=None)
    if best is None:
        accuracy = f"no cut has at most {max_parameters:,} parameters: **not met**"
    else:
        acc = _float(best["val_accuracy"]) or 0.0
        accuracy = (f"best cut with at most {max_parameters:,} parameters: after `{best['cut']}`, "
                    f"{int(best['parameters']):,} parameters, val accuracy {acc:.4f} (target {target}): "
                    f"**{'met' if acc >= target else 'not met'}**")
    minutes = result["wall"] / 60
    cuts = len(result["rows"])
    timing = (f"whole curve ({cuts} cuts) {minutes:.1f} min (target under {max_minutes:g} min with at least 4 cuts): "
              f"**{'met' if minutes < max_minutes and cuts >= 4 else 'not met'}**")
    if not fresh:
        timing += " (continued in an existing prune folder: finished cuts were not re-run, so the time is partial)"
    return [accuracy, timing]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DATA_DEFAULT)
    parser.add_argument("--recipe", type=Path, default=REPO_ROOT / "recipes" / "heritage-fast.yaml")
    parser.add_argument("--keep", default=KEEP_DEFAULT, help="block groups to cut after (default %(default)s)")
    parser.add_argument("--out", type=Path, help="prune folder (default: a new folder under /tmp, kept)")
    parser.add_argument("--max-parameters", type=int, default=1_000_000)
    parser.add_argument("--target-accuracy", type=float, default=0.90)
    parser.add_argument("--max-minutes", type=float, default=20.0)
    parser.add_argument("--label", default="", help="write to a separate BENCHMARKS.md section with this suffix")
    parser.add_argument("--benchmarks-md", type=Path, default=BENCHMARKS_MD, help="file to write the section to")
    args = parser.parse_args(argv)

    out = args.out or Path(tempfile.mkdtemp(prefix="tl-prune-bench-")) / "prune"
    fresh = not out.exists() or not any(out.iterdir())
    result = run_prune(args.data, args.recipe, args.keep, out)
    info = machine_info()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    suffix = f" ({args.label})" if args.label else ""
    lines = "\n".join(f"- {line}" for line in verdicts(result, args.max_parameters, args.target_accuracy,
                                                       args.max_minutes, fresh))
    body = f"""## Prune curve: {Path(args.data).name} with the backbone cut after block group k{suffix}

- command: `{result['command']}` (run by `{command_line(argv, 'benchmarks/prune_heritage.py')}`)
- date: {now()}
- machine: {machine_line(info)}; peak RSS {peak:.0f} MiB
- recipe: `{args.recipe.name}`, stages retargeted to the top groups each cut leaves; wall time of the whole
  command: {result['wall']:.0f} s
{lines}

{table(result['rows'])}

Parameters and multiply-adds: the whole network (backbone and head) for one image at the run's resolution;
latency: median of repeated fp32 forward passes of the rebuilt run network on this CPU after warm-up
(batch 1: 21 passes, batch 64: 5). Pareto front: no other cut is both cheaper and at least as accurate.
Report: `{out / 'prune.html'}`.
"""
    update_section("prune_heritage" + (f"-{args.label}" if args.label else ""), body, path=args.benchmarks_md)
    print(body)


if __name__ == "__main__":
    main()
