"""Studies on Architectural Heritage: the augmentation study (killed with kill -9 and re-run),
and the learning curve (training images per class from 25 to all).

(a) `transferlab study DATA --recipe recipes/heritage-fast.yaml --vary augment=none,light,classic
--seeds 0,1`, sent SIGKILL once its `--kill-at`-th run is in its second stage, then the same
command again: it must finish without redoing the runs finished before the kill. The
section records which runs were kept, the table, the paired differences and the wall times.
(b) `transferlab study DATA --vary train_per_class=25,50,100,200,all --seeds 0,1,2` (probe):
the learning curve of the default probe (training images per class; the validation set stays
the same, so every point is scored on the same images).

usage: .venv/bin/python benchmarks/studies_heritage.py [--only augment|curve] [--kill-at 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import DATA_DEFAULT, REPO_ROOT, command_line, machine_info, machine_line, md_table, now, update_section
else:
    from ._common import DATA_DEFAULT, REPO_ROOT, command_line, machine_info, machine_line, md_table, now, update_section

CLI = str(REPO_ROOT / ".venv" / "bin" / "transferlab")
BASELINE = "/work/shared/baselines/architectural-heritage-paper-f1.csv"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _runs_in_stage2(out: Path) -> list[str]:
    runs = out / "runs"
    if not runs.is_dir():
        return []
    return sorted(p.name for p in runs.iterdir() if (p / "checkpoints" / "stage2" / "last.ckpt").exists())


def augment_study(data: str, out: Path, kill_at: int) -> dict:
    command = [CLI, "study", data, "--recipe", str(REPO_ROOT / "recipes" / "heritage-fast.yaml"),
               "--vary", "augment=none,light,classic", "--seeds", "0,1", "--baseline", BASELINE, "--out", str(out),
               "--quiet"]
    started = time.perf_counter()
    process = subprocess.Popen(command)
    while process.poll() is None and len(_runs_in_stage2(out)) < kill_at:
        time.sleep(0.2)
    if process.poll() is not None:
        raise SystemExit("the study ended before the kill")
    time.sleep(5)  # mid-epoch of the second stage
    finished_before = sorted(p.parent.name for p in (out / "runs").glob("*/variant.json"))
    stamps = {name: (out / "runs" / name / "metrics.json").stat().st_mtime_ns for name in finished_before}
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_after = time.perf_counter() - started
    log(f"killed after {killed_after:.0f} s; finished before the kill: {finished_before}")
    restarted = time.perf_counter()
    subprocess.run(command, check=True)
    second = time.perf_counter() - restarted
    redone = [n for n, t in stamps.items() if (out / "runs" / n / "metrics.json").stat().st_mtime_ns != t]
    state = json.loads((out / "study.json").read_text())
    return {"command": " ".join(command[1:]).replace(CLI, "transferlab"), "finished_before": finished_before,
            "redone": redone, "killed_after_s": killed_after, "rerun_s": second, "state": state}


def learning_curve(data: str, out: Path) -> dict:
    command = [CLI, "study", data, "--vary", "train_per_class=25,50,100,200,all", "--seeds", "0,1,2",
               "--baseline", BASELINE, "--out", str(out), "--quiet"]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return {"command": " ".join(command[1:]).replace(CLI, "transferlab"), "seconds": time.perf_counter() - started,
            "state": json.loads((out / "study.json").read_text())}


def _fmt(stat: dict | None, scale: float = 1.0, digits: int = 4) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    text = f"{stat['mean'] * scale:.{digits}f}"
    return text + (f" ± {stat['sd'] * scale:.{digits}f}" if stat.get("sd") is not None else "")


def variant_table(summary: dict) -> str:
    rows = []
    for v in summary.get("variants", []):
        beats = v.get("beats")
        rows.append([v["variant"] + (" (reference)" if v.get("reference") else ""), v.get("n_seeds"),
                     _fmt(v.get("train_per_class"), digits=0), _fmt(v.get("accuracy")), _fmt(v.get("macro_f1")),
                     f"{beats['mean']:.1f} of {beats['of']}" if beats and beats.get("mean") is not None else "-",
                     _fmt(v.get("seconds"), digits=0), v.get("parameters") or "-"])
    return md_table(["variant", "seeds", "train images / class", "val accuracy", "val macro F1",
                     "beats paper F1 (classes)", "wall s", "parameters"], rows)


def paired_table(summary: dict) -> str:
    rows = []
    for v in summary.get("variants", []):
        p = v.get("paired")
        if not p:
            continue
        per_seed = " ".join(f"{s['accuracy_diff'] * 100:+.2f}" for s in p.get("seeds", [])
                            if s.get("accuracy_diff") is not None)
        rows.append([v["variant"], per_seed, _fmt(p.get("accuracy_diff"), 100, 2), _fmt(p.get("macro_f1_diff"), 100, 2),
                     f"{p.get('better')} / {p.get('worse')}",
                     "-" if p.get("p_value") is None else f"{p['p_value']:.3g}", p.get("verdict", "")])
    return md_table(["variant", "accuracy diff per seed (points)", "mean ± sd (points)", "macro F1 diff (points)",
                     "images won / lost", "McNemar p (pooled)", "verdict"], rows)


def write_section(name: str, title: str, lines: list[str], info: dict) -> None:
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    body = "\n".join([f"## {title}", "", f"Measured {now()} on {machine_line(info)}; peak RSS of a run "
                      f"(largest child process) {peak:.0f} MiB.", "", f"Command: `{command_line()}`", "", *lines])
    update_section(name, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DATA_DEFAULT)
    parser.add_argument("--only", choices=("augment", "curve"))
    parser.add_argument("--kill-at", type=int, default=3, help="kill once this many runs reached stage 2")
    parser.add_argument("--out", default="/tmp/transferlab-bench-studies")
    args = parser.parse_args()
    out = Path(args.out)
    if args.only in (None, "curve"):
        result = learning_curve(args.data, out / "curve")
        summary = result["state"].get("summary", {})
        lines = [f"Study: `{result['command']}` ({result['seconds']:.0f} s in all; features cached after the "
                 "first run).", "", variant_table(summary), "", paired_table(summary), "",
                 str((summary.get("noise") or {}).get("text", "")), ""]
        write_section("studies:curve", "Learning curve on Architectural Heritage (probe, 25 to all training images per class)",
                      lines, machine_info())
    if args.only in (None, "augment"):
        result = augment_study(args.data, out / "augment", args.kill_at)
        summary = result["state"].get("summary", {})
        kept = ", ".join(result["finished_before"]) or "none"
        lines = [f"Study: `{result['command']}`, sent SIGKILL {result['killed_after_s']:.0f} s in (run "
                 f"{args.kill_at} in its second stage), then the same command again ({result['rerun_s']:.0f} s).",
                 "", f"Finished before the kill and kept: {kept}. Redone after the restart: "
                 f"{', '.join(result['redone']) or 'none'}. Study status: {result['state'].get('status')}.", "",
                 variant_table(summary), "", paired_table(summary), "",
                 str((summary.get("noise") or {}).get("text", "")), ""]
        write_section("studies:augment", "Augmentation study on Architectural Heritage (killed and re-run)", lines,
                      machine_info())


if __name__ == "__main__":
    main()
