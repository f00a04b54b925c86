"""Fine-tuning time-to-accuracy on Architectural Heritage: transferlab against the plain reference.

Runs, in one script on the same machine: (a) `transferlab finetune` with a recipe (default
recipes/heritage-fast.yaml), reading validation accuracy against elapsed wall time from the
run's logs; (b) the plain reference /work/shared/bench/plain_finetune.py (whole network,
native 224 px, fp32). Reports the time each needs to reach the target accuracy and the ratio,
and writes a section of BENCHMARKS.md.

usage: .venv/bin/python benchmarks/finetune_heritage.py [--recipe FILE] [--target 0.93]
       [--plain-max-seconds 2400] [--plain-eval-every 100] [--skip-plain]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import (DATA_DEFAULT, REPO_ROOT, command_line, machine_info, machine_line, md_table, now,
                         update_section, wait_peak)
else:
    from ._common import (DATA_DEFAULT, REPO_ROOT, command_line, machine_info, machine_line, md_table, now,
                          update_section, wait_peak)

PLAIN_FINETUNE = "/work/shared/bench/plain_finetune.py"


def first_reaching(points: list[tuple[float, float]], target: float) -> float | None:
    return next((seconds for seconds, accuracy in points if accuracy >= target), None)


def run_ours(data: str, recipe: Path, out: Path) -> dict:
    from transferlab.finetune.curves import read_epoch_metrics

    start = time.perf_counter()
    command = [str(REPO_ROOT / ".venv/bin/transferlab"), "finetune", data, "--recipe", str(recipe),
               "--out", str(out), "--quiet"]
    peak = wait_peak(subprocess.Popen(command), command)
    wall = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    rows = read_epoch_metrics(out / "logs", len(metrics["stages"]))
    points = [(r["elapsed_s"], r["val_acc"]) for r in rows if "elapsed_s" in r and "val_acc" in r]
    return {"wall": wall, "peak_mib": peak, "points": points, "val_acc": metrics["val"]["accuracy"],
            "macro_f1": metrics["val"]["macro_f1"], "stages": metrics["stages"], "timings": metrics["timings"],
            "resolution": metrics["summary"]["resolution"], "precision": metrics["summary"]["precision"]}


def run_plain(data: str, max_seconds: float, eval_every: int, epochs: int) -> dict:
    command = [sys.executable, PLAIN_FINETUNE, data, "--epochs", str(epochs), "--eval-every", str(eval_every),
               "--max-seconds", str(max_seconds)]
    start = time.perf_counter()
    points = []
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("{"):
            record = json.loads(line)
            points.append((float(record["seconds"]), float(record["val_acc"])))
            print(f"plain: {record}", flush=True)
    process.stdout.close()
    peak = wait_peak(process, command)
    return {"wall": time.perf_counter() - start, "peak_mib": peak, "points": points, "command": " ".join(command)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DATA_DEFAULT)
    parser.add_argument("--recipe", type=Path, default=REPO_ROOT / "recipes" / "heritage-fast.yaml")
    parser.add_argument("--target", type=float, default=0.93)
    parser.add_argument("--plain-max-seconds", type=float, default=2400)
    parser.add_argument("--plain-eval-every", type=int, default=100)
    parser.add_argument("--plain-epochs", type=int, default=3)
    parser.add_argument("--skip-plain", action="store_true")
    parser.add_argument("--label", default="", help="write to a separate BENCHMARKS.md section with this suffix")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="tl-finetune-bench-") as tmp:
        ours = run_ours(args.data, args.recipe, Path(tmp) / "run")
    print(json.dumps({k: v for k, v in ours.items() if k != "stages"}), flush=True)
    plain = None if args.skip_plain else run_plain(args.data, args.plain_max_seconds, args.plain_eval_every,
                                                   args.plain_epochs)
    info = machine_info()

    ours_t = first_reaching(ours["points"], args.target)
    plain_t = first_reaching(plain["points"], args.target) if plain else None
    rows = [["transferlab " + args.recipe.name, f"{ours['wall']:.0f}", f"{ours['val_acc']:.4f}",
             f"{max(a for _, a in ours['points']):.4f}", f"{ours_t:.0f}" if ours_t else "not reached",
             f"{ours['resolution']}, {ours['precision']}", f"{ours['peak_mib']:.0f}"]]
    if plain:
        best_plain = max((a for _, a in plain["points"]), default=float("nan"))
        rows.append(["plain reference (224 px, fp32, full network)", f"{plain['wall']:.0f}", "-",
                     f"{best_plain:.4f}", f"{plain_t:.0f}" if plain_t else f"not reached in {plain['wall']:.0f}",
                     "224px, fp32", f"{plain['peak_mib']:.0f}"])
    if ours_t and plain_t:
        ratio = f"**{plain_t / ours_t:.1f}x** sooner ({plain_t:.0f} s / {ours_t:.0f} s)"
    elif ours_t and plain and plain["points"]:
        # Conservative: the reference's last evaluation (its own clock, start-up excluded) fell short.
        last = plain["points"][-1][0]
        ratio = (f"at least **{last / ours_t:.1f}x** sooner ({last:.0f} s / {ours_t:.0f} s: the reference had not "
                 f"reached {args.target} at its last evaluation)")
    else:
        ratio = "not measured"
    curve = ", ".join(f"{s:.0f}s: {a:.3f}" for s, a in ours["points"])
    plain_curve = ", ".join(f"{s:.0f}s: {a:.3f}" for s, a in plain["points"]) if plain else "-"
    stage_lines = "\n".join(f"  - stage {s['index']} `{s['train']}`: {s['epochs_run']} epochs, best val acc "
                            f"{s['best_val_acc']:.4f}, {s['seconds']:.0f} s (cached below unit {s['level']})"
                            for s in ours["stages"])
    suffix = f" ({args.label})" if args.label else ""
    body = f"""## Fine-tuning time to accuracy (Architectural Heritage){suffix}

- command: `{command_line(argv, 'benchmarks/finetune_heritage.py')}`
- date: {now()}
- machine: {machine_line(info)}
- data: `{args.data}`, 80/20 stratified split (transferlab: its own seeded split; reference: sklearn's, seed 0)
- time to {args.target} validation accuracy: {ratio}
- peak RSS: of each run's own process (os.wait4), MiB; target for the fast recipe: under 2 GB

{md_table(["run", "wall s", "final val acc", "best val acc", f"s to {args.target}", "input", "peak RSS MiB"], rows)}

transferlab stages:
{stage_lines}

Validation accuracy over elapsed time (transferlab, from the run start, decoding and caching included): {curve}

Reference (`{plain['command'] if plain else '-'}`; seconds from its first training step, its evaluations included): {plain_curve}
"""
    update_section("finetune_heritage" + (f"-{args.label}" if args.label else ""), body)
    print(body)


if __name__ == "__main__":
    main()
