#!/usr/bin/env python3
"""Fine-tuned features + random forest / linear SVM on Architectural Heritage, against pretrained features.

The museum-media experiment: fine-tune a network, then put classical classifiers on the
features of the fine-tuned network (`probe --from-run`) and compare them with the same
classifiers on the pretrained network's features (`probe`), and with the fine-tuned
network's own head. Steps, all library calls on the same machine:

1. fine-tune with a recipe (default recipes/heritage-fast.yaml), or take a finished run
   (--from-run RUN);
2. probe with the pretrained backbone (the run's architecture, its registered weights) and
   with the fine-tuned run's network, for each classifier (default random_forest and
   linear_svm), same layers, same resolution (the fine-tuned run's), same precision;
3. write a table (validation accuracy, macro F1, per-class F1 against the paper baseline,
   timings) and computed findings to a section of BENCHMARKS.md.

Every probe uses the fine-tune's split (same data, seed, val_fraction and per-class limit),
so the fine-tuned network never trained on a validation image; the script checks that the
probe found no overlap. The fine-tuned run chose its best stage on the same validation
images, so its features carry that (small) selection.

    .venv/bin/python benchmarks/finetuned_features_heritage.py
    .venv/bin/python benchmarks/finetuned_features_heritage.py --from-run runs/heritage-ft \
        --classifiers random_forest,linear_svm,logreg
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import (BASELINE_DEFAULT, DATA_DEFAULT, REPO_ROOT, command_line, fmt, machine_info,
                         machine_line, md_table, now, update_section)
else:
    from ._common import (BASELINE_DEFAULT, DATA_DEFAULT, REPO_ROOT, command_line, fmt, machine_info,
                          machine_line, md_table, now, update_section)

SECTION = "finetuned_features_heritage"
LEAK_WORDS = "in the fine-tuned run's training set"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- runs

def finetune_once(args, out: Path) -> tuple[Path, float]:
    """Fine-tune with the recipe (and the command line's overrides); the run folder and its wall time."""
    from transferlab.finetune.recipe import load_recipe
    from transferlab.pipelines.finetune import FinetuneConfig, run_finetune

    overrides = {"backbone": args.backbone, "stages": args.stages, "epochs": args.epochs,
                 "resolution": args.resolution, "precision": args.precision, "batch_size": args.batch_size,
                 "seed": args.seed, "val_fraction": args.val_fraction, "per_class": args.per_class}
    recipe = load_recipe(args.recipe, overrides)
    config = FinetuneConfig(data=args.data, out=str(out), recipe=recipe, baseline=args.baseline, embed="",
                            error_grid=0, progress=False, **({"workers": args.workers} if args.workers is not None
                                                             else {}))
    t0 = time.perf_counter()
    run_finetune(config)
    return out, time.perf_counter() - t0


def run_facts(run: Path) -> dict:
    """What the comparison takes from the fine-tuned run: its card, split settings, own figures."""
    from transferlab.runs import open_run

    opened = open_run(run)
    metrics = json.loads((opened.path / "metrics.json").read_text())
    split = json.loads((opened.path / "split.json").read_text())
    return {"card": opened.card, "metrics": metrics, "seed": split["seed"], "val_fraction": split["val_fraction"],
            "per_class": split.get("per_class_limit"), "root": split["root"]}


def probe_once(args, facts: dict, out: Path, cache: Path, classifier: str, from_run: Path | None) -> dict:
    """One `run_probe` call on pretrained (from_run None) or fine-tuned features; its figures."""
    from transferlab.pipelines.probe import ProbeConfig, run_probe

    card = facts["card"]
    config = ProbeConfig(
        data=args.data, out=str(out), backbone=card.backbone, from_run=str(from_run) if from_run else None,
        classifier=classifier, layers=args.layers.split(","), resolution=card.resolution, precision=args.precision
        or "auto", seed=facts["seed"], val_fraction=facts["val_fraction"], per_class=facts["per_class"],
        baseline=args.baseline, cache_dir=str(cache), embed="", error_grid=0, progress=False,
        **({"workers": args.workers} if args.workers is not None else {}),
    )
    t0 = time.perf_counter()
    result = run_probe(config)
    wall = time.perf_counter() - t0
    val = result.metrics.get("val", {})
    base = result.metrics.get("baseline") or {}
    return {
        "features": "fine-tuned" if from_run else "pretrained", "classifier": classifier,
        "wall_s": round(wall, 2), "accuracy": val.get("accuracy"), "macro_f1": val.get("macro_f1"),
        "beats": base.get("beats"), "of": base.get("of"), "layers": result.summary.get("layers"),
        "timings": result.metrics.get("timings", {}), "images": result.summary.get("images"),
        "leaks": [w for w in result.warnings if LEAK_WORDS in w], "precision": result.summary.get("precision"),
    }


# --------------------------------------------------------------------------- report

HEADERS = ["features", "classifier", "layers (dims)", "val acc", "val macro F1", "beats baseline",
           "extract s", "fit s", "wall s"]


def table_rows(report: dict) -> list[list]:
    own = report["finetuned_own"]
    rows = [["fine-tuned network (its own head)", "-", "-", fmt(own.get("accuracy"), 4), fmt(own.get("macro_f1"), 4),
             f"{own.get('beats')}/{own.get('of')}" if own.get("of") else "n/a", "-", "-",
             fmt(report.get("finetune_wall_s"))]]
    for r in report["probes"]:
        if "error" in r:
            rows.append([r["features"], r["classifier"], "", r["error"], "", "", "", "", ""])
            continue
        t = r["timings"]
        rows.append([r["features"], r["classifier"], r["layers"], fmt(r["accuracy"], 4), fmt(r["macro_f1"], 4),
                     f"{r['beats']}/{r['of']}" if r["of"] else "n/a", fmt(t.get("extract")), fmt(t.get("fit")),
                     fmt(r["wall_s"])])
    return rows


def findings(report: dict) -> list[str]:
    """Computed observations: fine-tuned minus pretrained per classifier, against the noise level."""
    done = [r for r in report["probes"] if "error" not in r and r.get("accuracy") is not None]
    lines = []
    n_val = next((r["images"]["val"] for r in done if isinstance(r.get("images"), dict)), None)
    if n_val and done:
        p = sorted(r["accuracy"] for r in done)[len(done) // 2]
        se = math.sqrt(max(p * (1 - p), 1e-12) / n_val)
        lines.append(f"- noise: {n_val} validation images, so one accuracy has a binomial standard error of about "
                     f"{se:.4f}; differences below ~{2 * se:.3f} are not meaningful.")
    by = {(r["features"], r["classifier"]): r for r in done}
    for classifier in dict.fromkeys(r["classifier"] for r in done):
        pre, ft = by.get(("pretrained", classifier)), by.get(("fine-tuned", classifier))
        if pre and ft:
            lines.append(f"- {classifier}: fine-tuned minus pretrained features: accuracy "
                         f"{ft['accuracy'] - pre['accuracy']:+.4f}, macro F1 {ft['macro_f1'] - pre['macro_f1']:+.4f}.")
    own = report["finetuned_own"].get("accuracy")
    best = max(done, key=lambda r: (r["accuracy"], r["macro_f1"]), default=None)
    if best and own is not None:
        lines.append(f"- best: {best['features']} features + {best['classifier']} at {best['accuracy']:.4f}; the "
                     f"fine-tuned network's own head {own:.4f} ({best['accuracy'] - own:+.4f}).")
    leaks = sum(len(r.get("leaks", [])) for r in done)
    lines.append("- split check: " + (f"{leaks} probe(s) warned of overlap: the figures are optimistic." if leaks
                                      else "no validation image was in the fine-tuned run's training set."))
    return lines


def markdown(report: dict, args) -> str:
    card = report["card"]
    limit = f", at most {report['per_class']} per class" if report["per_class"] else ""
    baseline = f"baseline `{args.baseline}` (paper per-class F1)" if args.baseline else "no baseline"
    return "\n".join([
        f"## Fine-tuned features + random forest / linear SVM (Architectural Heritage, {card['backbone']})",
        "",
        f"- command: `{report['command']}`",
        f"- date: {report['date']}",
        f"- machine: {machine_line(report['machine'])}",
        (f"- data: `{args.data}`; the fine-tune's split (seed {report['seed']}, val_fraction "
         f"{report['val_fraction']}{limit}); {baseline}"),
        f"- fine-tuned run: {report['finetune_source']}; {card['resolution']} px, {card['precision']}",
        (f"- probes: layers {args.layers}, {card['resolution']} px (the fine-tuned run's, for both kinds of "
         f"features), precision {report['probe_precision']}; pretrained = {card['backbone']}'s registered weights; "
         "fine-tuned = `probe --from-run` (the run's network.safetensors, backbone part)"),
        "",
        md_table(HEADERS, table_rows(report)),
        "",
        *findings(report),
    ])


# --------------------------------------------------------------------------- main

def run(args) -> dict:
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="tl-ft-features-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache_dir) if args.cache_dir else work / "cache"
    report: dict = {"date": now(), "command": command_line(args.argv, __file__), "probes": []}
    try:
        if args.from_run:
            ft_run = Path(args.from_run)
            report["finetune_source"], report["finetune_wall_s"] = f"`{args.from_run}`", None
        else:
            log(f"fine-tuning with {args.recipe} ...")
            ft_run, wall = finetune_once(args, work / "finetune")
            report["finetune_source"], report["finetune_wall_s"] = f"recipe `{args.recipe}` ({wall:.0f} s)", wall
            log(f"  done in {wall:.0f} s")
        facts = run_facts(ft_run)
        val = facts["metrics"].get("val", {})
        base = facts["metrics"].get("baseline") or {}
        report |= {"card": facts["card"].to_dict(), "seed": facts["seed"], "val_fraction": facts["val_fraction"],
                   "per_class": facts["per_class"],
                   "finetuned_own": {"accuracy": val.get("accuracy"), "macro_f1": val.get("macro_f1"),
                                     "beats": base.get("beats"), "of": base.get("of")}}
        for classifier in [c.strip() for c in args.classifiers.split(",") if c.strip()]:
            for source in (None, ft_run):
                label = "fine-tuned" if source else "pretrained"
                log(f"probe: {label} features + {classifier} ...")
                try:
                    row = probe_once(args, facts, work / f"probe-{label}-{classifier}", cache, classifier, source)
                except Exception as exc:  # keep going: one failed classifier should not cost the others
                    row = {"features": label, "classifier": classifier, "error": f"{type(exc).__name__}: {exc}"}
                report["probes"].append(row)
                log(f"  {row}")
        report["probe_precision"] = next((r["precision"] for r in report["probes"] if r.get("precision")), "n/a")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report["machine"] = machine_info()
    print()
    print(md_table(HEADERS, table_rows(report)))
    print()
    print("\n".join(findings(report)))
    if not args.no_write:
        update_section(SECTION + (f"-{args.label}" if args.label else ""), markdown(report, args))
        log("BENCHMARKS.md updated")
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--data", default=DATA_DEFAULT, help="class-per-folder image tree (default: %(default)s)")
    p.add_argument("--baseline", default=BASELINE_DEFAULT, help="per-class F1 CSV (default: %(default)s); '' for none")
    p.add_argument("--recipe", default=str(REPO_ROOT / "recipes" / "heritage-fast.yaml"),
                   help="fine-tuning recipe (default: %(default)s)")
    p.add_argument("--from-run", help="a finished fine-tuned run to take instead of fine-tuning")
    p.add_argument("--classifiers", default="random_forest,linear_svm",
                   help="comma-separated probe classifiers (default: %(default)s)")
    p.add_argument("--layers", default="stage-2,head", help="probe layers (default: %(default)s)")
    recipe = p.add_argument_group("recipe overrides (fine-tuning only; default: the recipe's)")
    recipe.add_argument("--backbone")
    recipe.add_argument("--stages", help="a stage preset, e.g. head-only, fine_tune, gradual:2")
    recipe.add_argument("--epochs", type=int, help="epochs of every stage")
    recipe.add_argument("--resolution", type=int)
    recipe.add_argument("--precision", help="fp32, bf16 or auto (also the probes'; default auto)")
    recipe.add_argument("--batch-size", type=int)
    recipe.add_argument("--seed", type=int, default=0)
    recipe.add_argument("--val-fraction", type=float, default=0.2)
    recipe.add_argument("--per-class", type=int, help="at most N images per class (a quick check)")
    p.add_argument("--workers", type=int, help="decoding workers (default: the library's for this CPU)")
    p.add_argument("--cache-dir", help="feature cache (default: a fresh one in the work dir)")
    p.add_argument("--work-dir", help="where run folders go (default: a temporary dir, removed afterwards)")
    p.add_argument("--keep", action="store_true", help="keep the run folders")
    p.add_argument("--label", default="", help="write to a separate BENCHMARKS.md section with this suffix")
    p.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.baseline = args.baseline or None
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
