"""Shared by auto_heritage.py and auto_elpv.py: `transferlab auto` against the default probe.

Runs, in one process tree on a quiet machine: the default probe (`transferlab probe DATA`,
its own fresh feature cache, the reference the issue's targets are stated against), then
`transferlab auto DATA --budget B` in a fresh folder (its own cache: every feature it uses is
extracted within its budget). Records wall time against the budget (+10% allowed), peak
RSS, the chosen run's validation accuracy and macro F1 against the probe's, the paper's
per-class F1 where a baseline is given, and auto's own ablation table from plan.md.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import command_line, machine_info, machine_line, md_table, now, update_section, wait_peak  # noqa: E402

LAUNCH = "from transferlab.cli import main; main()"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def transferlab(*args: str, env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one transferlab command in its own process: os.wait4
    gives that child's own resource usage, not the maximum over every child so far."""
    started = time.perf_counter()
    peak = wait_peak(subprocess.Popen([sys.executable, "-c", LAUNCH, *args], env=env), list(args))
    return time.perf_counter() - started, peak


def _seeded(name: str, seed: int) -> str:
    """A folder name: seed 0 keeps the name it always had."""
    return name if seed == 0 else f"{name}-s{seed}"


def _at_seed(label: str, seed: int) -> str:
    return label + (f" (seed {seed})" if seed else "")


def default_probe(data: str, work: Path, baseline: str | None, seed: int = 0) -> dict:
    out = work / _seeded("default-probe", seed)
    args = ["probe", data, "--out", str(out), "--cache-dir", str(work / "probe-cache"), "--quiet"]
    if baseline:
        args += ["--baseline", baseline]
    if seed:
        args += ["--seed", str(seed)]
    log(_at_seed("default probe", seed))
    wall, peak = transferlab(*args)
    metrics = json.loads((out / "metrics.json").read_text())
    return {"wall": wall, "peak_mib": peak, "metrics": metrics, "command": "transferlab " + " ".join(args),
            "out": out, "seed": seed}


def auto(data: str, work: Path, budget: str, baseline: str | None, label: str, seed: int = 0) -> dict:
    out = work / _seeded(f"auto-{label}", seed)
    args = ["auto", data, "--budget", budget, "--out", str(out), "--quiet"]
    if baseline:
        args += ["--baseline", baseline]
    if seed:
        args += ["--seed", str(seed)]
    log(_at_seed(f"auto --budget {budget}", seed))
    wall, peak = transferlab(*args)
    result = json.loads((out / "result.json").read_text())
    metrics = json.loads((out / result["run"] / "metrics.json").read_text())  # run: relative to out
    plan = (out / "plan.md").read_text(encoding="utf-8")
    return {"wall": wall, "peak_mib": peak, "result": result, "metrics": metrics, "plan": plan, "out": out,
            "command": "transferlab " + " ".join(args), "seed": seed}


def ablation(plan: str) -> str:
    match = re.search(r"## What each step contributed.*?\n\n(\|.*?)(?:\n\n|\Z)", plan, re.S)
    return match.group(1).strip() if match else "(no ablation table in plan.md)"


def decisions(plan: str) -> str:
    match = re.search(r"## Decisions\n\n(.*?)(?:\n\n|\Z)", plan, re.S)
    return match.group(1).strip() if match else ""


def section(name: str, title: str, probes: list[dict], runs: list[tuple[str, float, dict]], targets: list[str],
            argv_script: str, extra: str = "") -> None:
    """One BENCHMARKS.md section: a table with a row per default probe (one per seed) and per auto
    run (budget held or not), then `extra` (e.g. a table of gains), then each run's decisions and ablation."""
    info = machine_info()
    rows = []
    for probe in probes:
        pm = probe["metrics"]["val"]
        rows.append([_at_seed("default probe", probe["seed"]), f"{pm['accuracy']:.4f}", "-", f"{pm['macro_f1']:.4f}",
                     _beats(probe["metrics"]), f"{probe['wall']:.0f}", f"{probe['peak_mib']:.0f}", "-", "-"])
    blocks = []
    for budget, seconds, r in runs:
        m = r["metrics"]["val"]
        within = r["wall"] <= seconds * 1.10
        heading = _at_seed(f"auto --budget {budget}", r["seed"])
        rows.append([heading, f"{m['accuracy']:.4f}",
                     f"{r['result']['val_accuracy']:.4f}",
                     f"{m['macro_f1']:.4f}",
                     _beats(r["metrics"]), f"{r['wall']:.0f}", f"{r['peak_mib']:.0f}",
                     f"{seconds:.0f} (+10%: {'held' if within else 'NOT held'})",
                     Path(r["result"]["run"]).name + (f" + --tta {r['result']['tta']}" if r["result"]["tta"] != "none"
                                                      else "")])
        blocks.append(f"### {heading}: decisions\n\n`{r['command']}`\n\n{decisions(r['plan'])}\n\n"
                      f"What each step contributed:\n\n{ablation(r['plan'])}\n")
    body = f"""## {title}

- command: `{command_line(None, argv_script)}`
- date: {now()}
- machine: {machine_line(info)}
- peak RSS: of each command's own process (os.wait4), MiB
- val accuracy, macro F1 and paper F1: the chosen run's metrics.json (without test-time augmentation); with its TTA:
  auto's own figure for the model it names (result.json), with the `--tta` it names
- reference: `{probes[0]['command']}`
{chr(10).join('- ' + t for t in targets)}

{md_table(["run", "val accuracy", "with its TTA", "val macro F1", "paper F1 beaten", "wall s", "peak RSS MiB",
           "budget s", "chosen"], rows)}

{extra}
{chr(10).join(blocks)}
"""
    update_section(name, body)
    print(body)


def _beats(metrics: dict) -> str:
    b = metrics.get("baseline")
    return f"{b['beats']} of {b['of']}" if isinstance(b, dict) and "beats" in b else "-"


def workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


os.environ.setdefault("TRANSFERLAB_OFFLINE", "1")
