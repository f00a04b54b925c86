#!/usr/bin/env python3
"""Ranking benchmark on the real Architectural Heritage data: do LogME / LEEP / ImageNet
similarity rank the packaged backbones as the probe's measured accuracy does, and how long
does ranking take?

Per resolution mode ("auto": chosen from the images as the probe does, 128 px here;
"native": each backbone's pretraining size):
1. `rank_backbones` on tf_efficientnet_lite0/1/2 with an empty feature cache (cold);
2. the same call again (warm: features from the cache);
3. `run_probe` with defaults for each backbone, on the same cache (its training features
   are the ones ranking extracted), for the measured validation accuracy;
4. `rank_backbones` with those probe runs: the Spearman correlation of each estimate with
   accuracy.
Results per mode are kept in a JSON file (--results), so `--modes native` can be run later
and the section shows both. The section `rank_heritage` of BENCHMARKS.md is replaced.

    .venv/bin/python benchmarks/rank_heritage.py
    nohup .venv/bin/python benchmarks/rank_heritage.py --modes native > /tmp/rank-native.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import DATA_DEFAULT, command_line, fmt, machine_info, machine_line, md_table, now, update_section
else:
    from ._common import DATA_DEFAULT, command_line, fmt, machine_info, machine_line, md_table, now, update_section

BACKBONES = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")
MODES = ("auto", "native")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def rank(args, mode: str, probe_runs=()) -> tuple[dict, float]:
    from transferlab.insight.transferability import rank_backbones

    t0 = time.perf_counter()
    result = rank_backbones(args.data, list(args.backbones), resolution=None if mode == "auto" else "native",
                            cache_dir=str(args.cache), seed=args.seed, progress=False, probe_runs=list(probe_runs))
    wall = time.perf_counter() - t0
    log(result.table_text())
    return result.to_dict(), wall


def probe(args, mode: str, backbone: str, out: Path) -> dict:
    from transferlab.backbones.registry import describe_backbones
    from transferlab.pipelines.probe import ProbeConfig, run_probe

    native = {r["name"]: r["native_size"] for r in describe_backbones()}[backbone]
    config = ProbeConfig(data=args.data, out=str(out), backbone=backbone, seed=args.seed, cache_dir=str(args.cache),
                         progress=False, resolution=None if mode == "auto" else native)
    t0 = time.perf_counter()
    result = run_probe(config)
    wall = time.perf_counter() - t0
    val = result.metrics["val"]
    return {"backbone": backbone, "wall_s": round(wall, 1), "accuracy": val["accuracy"], "macro_f1": val["macro_f1"],
            "features": result.summary["features"], "resolution": result.summary["resolution"],
            "run": str(out)}


def run_mode(args, mode: str, work: Path) -> dict:
    if not args.keep_cache and args.cache.exists():
        shutil.rmtree(args.cache)  # cold: nothing of an earlier run may be reused
    log(f"[{mode}] rank, cold cache {args.cache} ...")
    cold, cold_s = rank(args, mode)
    log(f"[{mode}] rank, warm ...")
    warm, warm_s = rank(args, mode)
    probes = []
    for backbone in args.backbones:
        log(f"[{mode}] probe {backbone} ...")
        probes.append(probe(args, mode, backbone, work / f"probe-{mode}-{backbone}"))
        log(f"    {probes[-1]}")
    log(f"[{mode}] rank with the probe runs ...")
    final, final_s = rank(args, mode, probe_runs=[Path(p["run"]) for p in probes])
    return {"date": now(), "command": command_line(args.argv, __file__), "machine": machine_info(), "cold": cold, "cold_s": round(cold_s, 1), "warm": warm,
            "warm_s": round(warm_s, 1), "probes": probes, "final": final, "final_s": round(final_s, 1)}


# --------------------------------------------------------------------------- markdown

HEADERS = ["backbone", "px", "LogME", "LEEP", "ImageNet sim (mean / overall / distinct labels)", "probe val acc", "probe macro F1",
           "rank s cold", "rank s warm", "probe wall s"]


def _rows(report: dict) -> list[list]:
    cold = {r["backbone"]: r for r in report["cold"]["rows"]}
    warm = {r["backbone"]: r for r in report["warm"]["rows"]}
    probes = {p["backbone"]: p for p in report["probes"]}
    rows = []
    for r in report["final"]["rows"]:
        b = r["backbone"]
        sim = r["similarity"]
        rows.append([b, r["resolution"], fmt(r["logme"], 4), fmt(r["leep"], 4),
                     f"{sim['mean_share']:.3f} / {sim['overall_share']:.3f} / {sim['distinct_labels']}" if sim else "n/a",
                     fmt(probes[b]["accuracy"], 4), fmt(probes[b]["macro_f1"], 4),
                     f"{cold[b]['seconds']:.1f} ({cold[b]['features']})", fmt(warm[b]["seconds"]),
                     fmt(probes[b]["wall_s"])])
    return rows


def _correlations(report: dict) -> list[str]:
    labels = {"logme": "LogME", "leep": "LEEP", "task_similarity": "ImageNet similarity (mean share)"}
    lines = []
    for key, c in report["final"]["correlations"].items():
        if c.get("spearman") is None:
            lines.append(f"- {labels[key]}: not computed ({c['reason']})")
        else:
            lines.append(f"- {labels[key]}: Spearman rho {c['spearman']:+.2f} (p {c['p_value']:.2f}, n {c['n']})")
    return lines


def _orders(report: dict) -> list[str]:
    """Best-first order of the backbones by accuracy and by each estimate."""
    rows = report["final"]["rows"]
    probes = {p["backbone"]: p["accuracy"] for p in report["probes"]}
    short = {r["backbone"]: r["backbone"].replace("tf_efficientnet_", "") for r in rows}

    def order(key) -> str:
        scored = [r for r in rows if key(r) is not None]
        return " > ".join(short[r["backbone"]] for r in sorted(scored, key=key, reverse=True))

    sim = lambda r: r["similarity"]["mean_share"] if r["similarity"] else None
    return [(f"- best first: probe val accuracy {order(lambda r: probes.get(r['backbone']))}; "
            f"LogME {order(lambda r: r['logme'])}; LEEP {order(lambda r: r['leep'])}; "
            f"ImageNet similarity {order(sim)}")]


def _similarity_lines(report: dict) -> list[str]:
    lines = []
    for r in report["final"]["rows"]:
        sim = r["similarity"]
        if not sim:
            continue
        per = "; ".join(f"{c} → {v['imagenet_label'].split(',')[0]} {v['share']:.0%}"
                        for c, v in sim["per_class"].items())
        lines.append(f"- {r['backbone']}: {per}")
    return lines


def _remeasured_line(report: dict) -> list[str]:
    again = report.get("warm_remeasured")
    if not again:
        return []
    return [(f"- warm figures measured again on the same cache: `{again['command']}`, {again['date']}; "
            f"{machine_line(again['machine'])}")]


def markdown(results: dict, args) -> str:
    lines = [
        "## Ranking backbones",
        "",
        (f"- data: `{args.data}`, training split of the probe's stratified 80/20 split (seed {args.seed}); "
        "estimates on the avg-pooled 'head' features (the probe's layers stage-2,head are extracted, so the "
        "probe that follows reads its training features from the cache)"),
        ("- rank s: per backbone, backbone load + feature extraction + LogME/LEEP/similarity, as reported by "
        "`rank_backbones` (cold: empty cache; the features column says how many were extracted); probe: "
        "`run_probe` with defaults on the same cache, val accuracy is what the estimates should rank"),
        ("- p-values: exact two-sided permutation test over all orderings (scipy's t approximation says p = 0 "
        "for a perfect ranking of 3)"),
        ("- the machine is shared: with a load average above its 2 cores, absolute times are inflated "
        "(compare with the probe section's cold extraction of the same images)"),
        "",
    ]
    for mode in MODES:
        report = results.get(mode)
        if report is None:
            continue
        title = "auto resolution (chosen from the images, as the probe does)" if mode == "auto" \
            else "native resolution of each backbone"
        lines += [
            f"### {title}",
            "",
            f"- command: `{report['command']}`",
            f"- date: {report['date']}; machine: {machine_line(report['machine'])}",
            (f"- whole ranking of {len(report['final']['rows'])} backbones: cold {report['cold_s']:.1f} s, "
            f"warm {report['warm_s']:.1f} s (wall, `rank_backbones` call)"),
            *_remeasured_line(report),
            "",
            md_table(HEADERS, _rows(report)),
            "",
            "Correlation of each estimate with the measured probe accuracy:",
            *_orders(report),
            *_correlations(report),
            "",
            "Dominant ImageNet label per class (share of the class's training images):",
            *_similarity_lines(report),
            "",
        ]
        notes = report["final"]["notes"]
        lines += [f"- note: {n}" for n in notes]
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--data", default=DATA_DEFAULT, help="class-per-folder image tree (default: %(default)s)")
    p.add_argument("--backbones", default=",".join(BACKBONES), help="comma-separated (default: %(default)s)")
    p.add_argument("--modes", default="auto", help="comma-separated from auto,native (default: %(default)s)")
    p.add_argument("--native", action="store_true", help="shorthand for --modes auto,native")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "tl-rank-cache",
                   help="feature cache, emptied before each mode's cold run (default: %(default)s)")
    p.add_argument("--keep-cache", action="store_true", help="do not empty the cache first (cold is then not cold)")
    p.add_argument("--results", type=Path, default=Path(tempfile.gettempdir()) / "tl-rank-heritage.json",
                   help="JSON file holding each mode's results (default: %(default)s)")
    p.add_argument("--work-dir", help="where probe run folders go (default: a temporary dir, removed afterwards)")
    p.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    p.add_argument("--remeasure-warm", action="store_true",
                   help="measure only the warm ranking again, on the cache a full run left (after a change to "
                        "the estimates' code); the rest of the stored results is kept")
    p.add_argument("--rerender", action="store_true",
                   help="measure nothing: recompute the correlations from --results and rewrite the section")
    return p


def rerender(results: dict) -> None:
    """Correlations again from the stored rows (e.g. after a change in how p-values are computed)."""
    from transferlab.insight.transferability import RankRow, correlate_with_accuracy

    for report in results.values():
        final = report["final"]
        notes = [n for n in final["notes"] if not n.startswith("with fewer than 5 backbones")]
        final["correlations"] = correlate_with_accuracy([RankRow(**row) for row in final["rows"]], notes)
        final["notes"] = notes


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    modes = ["auto", "native"] if args.native else [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in MODES for m in modes):
        raise SystemExit(f"unknown mode in {modes}: choose from {', '.join(MODES)}")
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    if args.remeasure_warm:
        for mode in modes:
            log(f"[{mode}] rank, warm (remeasured) ...")
            results[mode]["warm"], warm_s = rank(args, mode)
            results[mode]["warm_s"] = round(warm_s, 1)
            results[mode]["warm_remeasured"] = {"date": now(), "command": command_line(args.argv, __file__),
                                                "machine": machine_info()}
    if args.rerender or args.remeasure_warm:
        rerender(results)
        args.results.write_text(json.dumps(results, indent=1))
        if not args.no_write:
            update_section("rank_heritage", markdown(results, args))
        print(markdown(results, args))
        return 0
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="tl-rank-heritage-"))
    try:
        for mode in modes:
            results[mode] = run_mode(args, mode, work)
            args.results.write_text(json.dumps(results, indent=1))
            if not args.no_write:
                update_section("rank_heritage", markdown(results, args))
                log("BENCHMARKS.md updated")
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(markdown(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
