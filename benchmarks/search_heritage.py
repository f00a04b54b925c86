"""`transferlab search` on Architectural Heritage: 12 trials of a small space around the fast
recipe, killed with kill -9 in the middle and continued with the same command.

Records: the wall time of both parts (and in all, against the 40-minute target), trials by
state (complete / pruned / failed-and-retried), the best trial, and whether best_recipe.yaml
re-runs: `transferlab finetune --recipe best_recipe.yaml` must give the best trial's accuracy.

usage: .venv/bin/python benchmarks/search_heritage.py [--trials 12] [--kill-after 4] [--no-rerun] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import DATA_DEFAULT, REPO_ROOT, command_line, machine_info, machine_line, md_table, now, update_section
else:
    from ._common import DATA_DEFAULT, REPO_ROOT, command_line, machine_info, machine_line, md_table, now, update_section

CLI = str(REPO_ROOT / ".venv" / "bin" / "transferlab")
SPACE = REPO_ROOT / "benchmarks" / "heritage_search_space.yaml"
RECIPE = REPO_ROOT / "recipes" / "heritage-fast.yaml"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _trial_rows(out: Path) -> list[dict]:
    path = out / "trials.csv"
    return list(csv.DictReader(path.open())) if path.is_file() else []


def _finished_trials(out: Path) -> int:
    trials = out / "trials"
    if not trials.is_dir():
        return 0
    return sum(1 for p in trials.iterdir() if (p / "run.json").is_file()
               and json.loads((p / "run.json").read_text()).get("status") in ("complete", "pruned"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DATA_DEFAULT)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--kill-after", type=int, default=4, help="kill once this many trials have ended")
    parser.add_argument("--no-rerun", action="store_true", help="skip re-running best_recipe.yaml")
    parser.add_argument("--out", default="/tmp/transferlab-bench-search")
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)  # our own scratch folder from an earlier benchmark run
    command = [CLI, "search", args.data, "--recipe", str(RECIPE), "--space", str(SPACE), "--trials",
               str(args.trials), "--out", str(out), "--seed", "0", "--quiet"]
    started = time.perf_counter()
    process = subprocess.Popen(command)
    while process.poll() is None and _finished_trials(out) < args.kill_after:
        time.sleep(1)
    time.sleep(20)  # into the next trial
    if process.poll() is not None:
        raise SystemExit("the search ended before the kill")
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = time.perf_counter() - started
    log(f"killed after {first:.0f} s with {_finished_trials(out)} trials ended")
    restarted = time.perf_counter()
    subprocess.run(command, check=True)
    second = time.perf_counter() - restarted
    rows = _trial_rows(out)
    record = json.loads((out / "search.json").read_text())
    keys = list(yaml.safe_load(SPACE.read_text()))
    for row in rows:
        row["params"] = ", ".join(f"{k}={row.get(k, '')}" for k in keys)
    states = Counter(r["state"] for r in rows)
    best = max((r for r in rows if r["state"] == "complete" and r["value"]), key=lambda r: float(r["value"]))
    rerun = None
    if not args.no_rerun:
        again = out.parent / (out.name + "-best-rerun")
        if again.exists():
            shutil.rmtree(again)
        subprocess.run([CLI, "finetune", args.data, "--recipe", str(out / "best_recipe.yaml"), "--out", str(again),
                        "--quiet"], check=True, stdout=subprocess.DEVNULL)
        rerun = json.loads((again / "metrics.json").read_text())["val"]["accuracy"]
    write(args, command, rows, states, best, first, second, rerun, record)


def write(args, command, rows, states, best, first, second, rerun, record) -> None:
    info = machine_info()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    shown = " ".join(command[1:]).replace(CLI, "transferlab")
    table = md_table(["trial", "state", "val acc", "epochs", "seconds", "params", "note"],
                     [[r["number"], r["state"], r["value"] or "-", r.get("epochs", ""), r.get("seconds", ""),
                       r.get("params", ""), r.get("note", "")] for r in rows])
    total = first + second
    lines = [
        "## Optuna search on Architectural Heritage (12 trials, killed and continued)", "",
        f"Measured {now()} on {machine_line(info)}; peak RSS of a worker {peak:.0f} MiB.", "",
        f"Command: `{command_line()}`, which runs `{shown}`, kills it with SIGKILL after "
        f"{args.kill_after} trials ended (+20 s), and runs the same command again.", "",
        f"Wall time: {first:.0f} s before the kill + {second:.0f} s after = **{total / 60:.1f} min** "
        f"(target: under 40 min). Trials by state: {dict(states)}; "
        f"complete + pruned = {states.get('complete', 0) + states.get('pruned', 0)} (asked: {args.trials}).", "",
        f"Best: trial {best['number']}, val accuracy {best['value']} ({best.get('params', '')}). "
        + (f"`transferlab finetune --recipe best_recipe.yaml` re-ran it to val accuracy {rerun:.4f}."
           if rerun is not None else ""), "",
        table, "", f"Search record: stopped by {record.get('stopped_by', record.get('status', '?'))}.",
    ]
    update_section("search:heritage", "\n".join(lines))


if __name__ == "__main__":
    main()
