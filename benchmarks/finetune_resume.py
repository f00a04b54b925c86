"""Kill -9 during the second stage, then `--resume`: does it finish where the uninterrupted run does?

On Architectural Heritage (default recipe recipes/heritage-fast.yaml), in one script:
(a) `transferlab finetune` straight through, twice (how far two identical runs drift apart
is the yardstick for the resumed one); (b) the same command in another run folder,
sent SIGKILL once its second stage has written a checkpoint and then run on for
`--kill-delay` seconds (so the kill lands mid-epoch, activations cached, optimizer state
in flight); (c) `transferlab finetune --resume` on (b). Compares validation accuracy,
macro F1, per-stage best accuracy and epochs, and writes a section of BENCHMARKS.md.

usage: .venv/bin/python benchmarks/finetune_resume.py [--recipe FILE] [--kill-delay 2] [--tolerance 0.005]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import DATA_DEFAULT, REPO_ROOT, command_line, machine_info, machine_line, md_table, now, update_section
else:
    from ._common import DATA_DEFAULT, REPO_ROOT, command_line, machine_info, machine_line, md_table, now, update_section

CLI = str(REPO_ROOT / ".venv" / "bin" / "transferlab")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def finetune(*args: str) -> list[str]:
    return [CLI, "finetune", *args, "--quiet"]


def straight_run(data: str, recipe: Path, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run(finetune(data, "--recipe", str(recipe), "--out", str(out)), check=True)
    return time.perf_counter() - start


def killed_run(data: str, recipe: Path, out: Path, kill_delay: float, timeout: float) -> dict:
    """Start a run, SIGKILL it `kill_delay` s after stage 2's first checkpoint; what it left behind."""
    start = time.perf_counter()
    process = subprocess.Popen(finetune(data, "--recipe", str(recipe), "--out", str(out)))
    checkpoint = out / "checkpoints" / "stage2" / "last.ckpt"
    deadline = time.time() + timeout
    while process.poll() is None and not checkpoint.exists():
        if time.time() > deadline:
            process.kill()
            raise SystemExit(f"stage 2 wrote no checkpoint within {timeout:.0f} s")
        time.sleep(0.05)
    if process.poll() is not None:
        raise SystemExit(f"the run ended (exit {process.returncode}) before stage 2 checkpointed: nothing to kill")
    time.sleep(kill_delay)
    if process.poll() is not None:
        raise SystemExit("the run finished before the kill: use a shorter --kill-delay")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    seconds = time.perf_counter() - start
    from transferlab.finetune.curves import read_epoch_metrics

    stage2_epochs = sum(1 for row in read_epoch_metrics(out / "logs", 2) if row["stage"] == 2 and "val_acc" in row)
    status = json.loads((out / "run.json").read_text())["status"]
    state = json.loads((out / "finetune_state.json").read_text())
    return {"seconds": seconds, "status": status, "stages_done": len(state["stages"]),
            "metrics_json_exists": (out / "metrics.json").exists(), "stage2_epochs_done": stage2_epochs}


def resumed_run(out: Path) -> float:
    start = time.perf_counter()
    subprocess.run(finetune("--resume", str(out)), check=True)
    return time.perf_counter() - start


def summary(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    return {"val_acc": metrics["val"]["accuracy"], "macro_f1": metrics["val"]["macro_f1"],
            "stages": [(s["best_val_acc"], s["epochs_run"]) for s in metrics["stages"]]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DATA_DEFAULT)
    parser.add_argument("--recipe", type=Path, default=REPO_ROOT / "recipes" / "heritage-fast.yaml")
    parser.add_argument("--kill-delay", type=float, default=2.0,
                        help="seconds after stage 2's first checkpoint before SIGKILL (default: %(default)s)")
    parser.add_argument("--tolerance", type=float, default=0.005, help="allowed accuracy difference (0.005 = 0.5 points)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--straight-runs", type=int, default=2,
                        help="uninterrupted runs: a second one measures run-to-run variation (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.straight_runs < 1:
        parser.error("--straight-runs must be at least 1")

    with tempfile.TemporaryDirectory(prefix="tl-resume-bench-") as tmp:
        straights = []
        for index in range(args.straight_runs):
            log(f"uninterrupted run {index + 1}")
            seconds = straight_run(args.data, args.recipe, Path(tmp) / f"straight{index}")
            straights.append((seconds, summary(Path(tmp) / f"straight{index}")))
            log(f"uninterrupted run {index + 1} done in {seconds:.0f} s")
        killed = Path(tmp) / "killed"
        kill = killed_run(args.data, args.recipe, killed, args.kill_delay, args.timeout)
        log(f"killed after {kill['seconds']:.0f} s: {kill}")
        resume_s = resumed_run(killed)
        log(f"resumed run done in {resume_s:.0f} s")
        b = summary(killed)

    a = straights[0][1]
    acc_diff = abs(a["val_acc"] - b["val_acc"])
    stage_diffs = [abs(x[0] - y[0]) for x, y in zip(a["stages"], b["stages"])]
    ok = acc_diff <= args.tolerance and all(d <= args.tolerance for d in stage_diffs)

    def stages_cell(result: dict) -> str:
        return ", ".join(f"{acc:.4f} ({ep} ep)" for acc, ep in result["stages"])

    rows = [[f"uninterrupted #{i + 1}", f"{seconds:.0f}", f"{r['val_acc']:.4f}", f"{r['macro_f1']:.4f}",
             stages_cell(r)] for i, (seconds, r) in enumerate(straights)]
    rows.append(["killed + resumed", f"{kill['seconds']:.0f} + {resume_s:.0f}", f"{b['val_acc']:.4f}",
                 f"{b['macro_f1']:.4f}", stages_cell(b)])
    if len(straights) > 1:
        repeat = abs(straights[0][1]["val_acc"] - straights[1][1]["val_acc"])
        noise = (f"Between the two uninterrupted runs (same command, same seed): {repeat * 100:.2f} points "
                 f"({'bitwise the same metrics' if straights[0][1] == straights[1][1] else 'not identical'}).")
    else:
        noise = ""
    body = f"""## Kill -9 in the second stage, then resume (Architectural Heritage)

- command: `{command_line(argv, 'benchmarks/finetune_resume.py')}`
- date: {now()}
- machine: {machine_line(machine_info())}
- data: `{args.data}`, 80/20 stratified split; recipe `{args.recipe.name}`
- kill: SIGKILL {args.kill_delay:g} s after stage 2 wrote its first checkpoint, {kill['seconds']:.0f} s into the run,
  after {kill['stage2_epochs_done']} finished stage-2 epoch(s); it left run.json status `{kill['status']}`, {kill['stages_done']} finished stage(s) in finetune_state.json,
  metrics.json {'present (wrong!)' if kill['metrics_json_exists'] else 'absent'}
- resume: `transferlab finetune --resume RUN` (recomputes the cached activations of the frozen units with the
  same seeded draws, then continues stage 2 from its last checkpoint)

{md_table(["run", "wall s", "val acc", "val macro F1", "best val acc per stage (epochs)"], rows)}

Validation accuracy difference, resumed against uninterrupted #1: {acc_diff * 100:.2f} points (per stage:
{', '.join(f'{d * 100:.2f}' for d in stage_diffs)}); target within {args.tolerance * 100:.1f} points: **{'met' if ok else 'NOT met'}**.
{noise}
"""
    update_section("finetune_resume", body)
    print(body)
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
