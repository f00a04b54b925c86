"""Ensembles of the packaged backbones on Architectural Heritage, and test-time augmentation.

1. Members, each an ordinary run with the same data, seed and validation split (so none
   trained on an image the ensemble is scored on): `transferlab probe` with
   tf_efficientnet_lite0, lite1 and lite2 (default settings), and `transferlab finetune
   --recipe recipes/heritage-fast.yaml` with lite0 and lite1. A member folder that is already
   complete in --work is reused (its own wall time is then the one it recorded).
2. `transferlab ensemble MEMBERS --method M` for mean, weighted, stack and select: validation
   accuracy (out of fold for the fitted methods) against the best member scored on the same
   images, the paper's per-class F1, wall time.
3. Test-time augmentation: validation accuracy and prediction time of `predict --tta MODE`
   for a probe and a fine-tuned member, every mode against none, same images, same process.

Writes the sections `ensemble_heritage` and `tta_heritage` of BENCHMARKS.md.

usage: .venv/bin/python benchmarks/ensemble_heritage.py [--work DIR] [--probes lite0,lite1,lite2]
       [--finetunes lite0,lite1] [--methods mean,weighted,stack,select] [--tta-modes none,flip,crops,flip-crops]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import (BASELINE_DEFAULT, BENCHMARKS_MD, DATA_DEFAULT, REPO_ROOT, command_line, machine_info,
                         machine_line, md_table, now, update_section)
else:
    from ._common import (BASELINE_DEFAULT, BENCHMARKS_MD, DATA_DEFAULT, REPO_ROOT, command_line, machine_info,
                          machine_line, md_table, now, update_section)

LAUNCH = "from transferlab.cli import main; main()"
RECIPE = REPO_ROOT / "recipes" / "heritage-fast.yaml"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def transferlab(*args: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", LAUNCH, *args], check=True)
    return time.perf_counter() - started


def complete(run: Path) -> bool:
    try:
        return json.loads((run / "run.json").read_text())["status"] == "complete"
    except (OSError, ValueError, KeyError):
        return False


def member(args, kind: str, short: str) -> dict:
    backbone = f"tf_efficientnet_{short}"
    out = args.work / f"{kind}-{short}"
    if kind == "probe":
        command = ["probe", args.data, "--backbone", backbone, "--out", str(out), "--quiet"]
    else:
        command = ["finetune", args.data, "--recipe", str(RECIPE), "--backbone", backbone, "--out", str(out), "--quiet"]
    reused = complete(out)
    if not reused:
        log(f"{kind} {backbone}")
        transferlab(*command)
    metrics = json.loads((out / "metrics.json").read_text())
    card = json.loads((out / "model" / "model.json").read_text())
    return {"run": out, "kind": kind, "backbone": backbone, "resolution": card["resolution"],
            "val_accuracy": metrics["val"]["accuracy"], "val_macro_f1": metrics["val"]["macro_f1"],
            "seconds": metrics["timings"]["total"], "reused": reused,
            "command": "transferlab " + " ".join(command)}


def ensemble(args, members: list[dict], method: str) -> dict:
    out = args.work / f"ensemble-{method}"
    command = ["ensemble", *[str(m["run"]) for m in members], "--method", method, "--baseline", args.baseline,
               "--out", str(out), "--quiet"]
    log(f"ensemble {method}")
    wall = transferlab(*command)
    metrics = json.loads((out / "metrics.json").read_text())
    return {"method": method, "wall": wall, "metrics": metrics, "command": "transferlab " + " ".join(command)}


def tta_rows(run: Path, modes: list[str]) -> list[dict]:
    """Validation accuracy and prediction time of every mode, on the run's own validation images."""
    import csv

    from transferlab.inference.predict import load_predictor

    with open(run / "predictions.csv", newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == "val"]
    paths, truth = [r["path"] for r in rows], [r["true"] for r in rows]
    out = []
    for mode in modes:
        predictor = load_predictor(run, tta=mode)
        started = time.perf_counter()
        results = predictor.predict_paths(paths, top_k=1, batch_size=64)
        seconds = time.perf_counter() - started
        accuracy = sum(r.top[0][0] == t for r, t in zip(results, truth) if r.top) / len(truth)
        out.append({"mode": mode, "accuracy": accuracy, "seconds": seconds, "images": len(paths)})
        log(f"tta {run.name} {mode}: {accuracy:.4f} in {seconds:.0f} s")
    return out


def ensemble_section(args, members: list[dict], results: list[dict], info: dict, peak: float) -> str:
    member_rows = [[m["run"].name, m["kind"], m["backbone"], m["resolution"], f"{m['val_accuracy']:.4f}",
                    f"{m['val_macro_f1']:.4f}", f"{m['seconds']:.0f}" + (" (earlier)" if m["reused"] else "")]
                   for m in members]
    ens_rows, lines = [], []
    for r in results:
        table, metrics = r["metrics"]["ensemble"], r["metrics"]
        best = next(m for m in table["members"] if m["member"] == table["best_member"])
        weights = ("stacked" if r["method"] == "stack" else
                   ", ".join(f"{m['weight']:.2f}" for m in table["members"]))
        beats = metrics.get("baseline", {})
        ens_rows.append([r["method"], f"{table['ensemble']['val']['accuracy']:.4f}",
                         f"{table['ensemble']['val']['macro_f1']:.4f}", table["val_is"],
                         f"{best['val']['accuracy']:.4f} ({Path(best['run']).name})",
                         f"{table['gain_over_best_member'] * 100:+.2f}", weights,
                         f"{beats.get('beats', '?')} of {beats.get('of', '?')}", f"{r['wall']:.0f}"])
        lines.append(f"- `{r['command']}`")
    member_commands = "\n".join(f"- `{m['command']}`" for m in members)
    return f"""## Ensembles of the packaged backbones: Architectural Heritage

- command: `{command_line(None, 'benchmarks/ensemble_heritage.py')}`
- date: {now()}
- machine: {machine_line(info)}; peak RSS of the largest child process {peak:.0f} MiB
- members (same data, seed 0, val fraction 0.2: the same 2026 validation images, on which no member trained):
{member_commands}
- ensembles:
{chr(10).join(lines)}

{md_table(["member", "kind", "backbone", "px", "val accuracy", "val macro F1", "run s"], member_rows)}

{md_table(["method", "val accuracy", "val macro F1", "validation figure", "best member (same images)",
           "vs best (points)", "weights", "paper F1 beaten", "wall s"], ens_rows)}

"run s" is each member run's own total time; a probe whose features were already in the feature
cache (from an earlier benchmark) took less than a first extraction would.
"Best member" is scored through the ensemble's own network on the same images (the members at
a lower resolution than the largest see the image resized inside the graph, so their figure can
differ slightly from their own run's). The fitted methods' validation figures are 5-fold
cross-validated on the validation set; their kept weights are fitted on all of it.
"""


def tta_section(args, tables: dict[str, list[dict]], info: dict) -> str:
    blocks = []
    for name, rows in tables.items():
        base = rows[0]
        body = [[r["mode"], f"{r['accuracy']:.4f}", f"{(r['accuracy'] - base['accuracy']) * 100:+.2f}",
                 f"{r['seconds']:.1f}", f"{r['seconds'] / base['seconds']:.2f}x"] for r in rows]
        blocks.append(f"**{name}** ({base['images']} validation images)\n\n"
                      + md_table(["--tta", "val accuracy", "vs none (points)", "predict s", "time vs none"], body))
    return f"""## Test-time augmentation: Architectural Heritage

- command: `{command_line(None, 'benchmarks/ensemble_heritage.py')}` (its TTA step), which calls
  `load_predictor(RUN, tta=MODE).predict_paths(validation images)` (what `transferlab predict RUN --tta MODE` runs)
- date: {now()}
- machine: {machine_line(info)}
- modes: none; flip (2 views); crops (the image and 4 corner crops of 7/8 enlarged back, 5 views);
  flip-crops (10 views). Time includes decoding the images, the same for every mode.

{chr(10).join(chr(10) + b + chr(10) for b in blocks)}
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DATA_DEFAULT)
    parser.add_argument("--baseline", default=BASELINE_DEFAULT)
    parser.add_argument("--work", type=Path, default=Path("/tmp/transferlab-bench-ensemble"))
    parser.add_argument("--probes", default="lite0,lite1,lite2")
    parser.add_argument("--finetunes", default="lite0,lite1")
    parser.add_argument("--methods", default="mean,weighted,stack,select")
    parser.add_argument("--tta-modes", default="none,flip,crops,flip-crops")
    parser.add_argument("--benchmarks-md", type=Path, default=BENCHMARKS_MD)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TRANSFERLAB_OFFLINE", "1")

    members = [member(args, "probe", s) for s in args.probes.split(",") if s]
    members += [member(args, "finetune", s) for s in args.finetunes.split(",") if s]
    results = [ensemble(args, members, m) for m in args.methods.split(",") if m]
    info = machine_info()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    update_section("ensemble_heritage", ensemble_section(args, members, results, info, peak), path=args.benchmarks_md)
    print(f"section ensemble_heritage written to {args.benchmarks_md}")
    modes = [m for m in args.tta_modes.split(",") if m]
    if not modes:
        return  # --tta-modes "": the ensembles only
    if modes[0] != "none":
        modes = ["none", *modes]
    picks = [m for m in members if m["kind"] == "probe"][:1] + [m for m in members if m["kind"] == "finetune"][:1]
    tables = {f"{m['kind']} {m['backbone']} ({m['resolution']} px)": tta_rows(m["run"], modes) for m in picks}
    update_section("tta_heritage", tta_section(args, tables, machine_info()), path=args.benchmarks_md)
    print(f"section tta_heritage written to {args.benchmarks_md}")


if __name__ == "__main__":
    main()
