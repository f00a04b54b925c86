#!/usr/bin/env python3
"""Probe benchmark on the real Architectural Heritage data (64 x 64 JPEGs, 10 classes).

Default mode: `run_probe` on train_val (stratified 80/20 split, seed 0) with the paper's
per-class F1 as baseline, twice: first with a fresh, empty feature cache (cold), then again
with the same cache (warm). Wall time is measured around the whole `run_probe` call. If the
`transferlab` CLI exists, `transferlab probe ...` is timed too (cold with its own fresh
cache, then warm), as a subprocess, so its wall time includes start-up and imports.
Targets: cold < 6 min with validation accuracy >= 0.92; warm < 30 s.

`--study`: a small grid that justifies the defaults: resolution {64, 96, 128, 160, 224} x
precision {fp32, bf16} with layers 'stage-2,head' and logreg, then at 128 px bf16 the layer
sets {head}, {stage-1,head}, {stage-2,head}, {stage-3,stage-2,head}. The study uses its own
persistent cache dir (--study-cache) so re-runs and repeated keys reuse features; results
are appended to a JSON lines file as they come, so a long background run can be polled.

Each mode replaces its own section of BENCHMARKS.md (unless --no-write).

    .venv/bin/python benchmarks/probe_heritage.py
    nohup .venv/bin/python benchmarks/probe_heritage.py --study > /tmp/study.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import (BASELINE_DEFAULT, DATA_DEFAULT, REPO_ROOT, command_line, fmt, machine_info,
                         machine_line, md_table, now, run_with_peak, update_section)
else:
    from ._common import (BASELINE_DEFAULT, DATA_DEFAULT, REPO_ROOT, command_line, fmt, machine_info,
                          machine_line, md_table, now, run_with_peak, update_section)

TARGET_COLD_S = 360.0
TARGET_ACC = 0.92
TARGET_WARM_S = 30.0
TARGET_PEAK_MIB = 1536.0  # a probe of 10,000 images stays under 1.5 GB

STUDY_RESOLUTIONS = (64, 96, 128, 160, 224)
STUDY_PRECISIONS = ("fp32", "bf16")
STUDY_LAYER_SETS = ("head", "stage-1,head", "stage-2,head", "stage-3,stage-2,head")
STUDY_LAYER_RES, STUDY_LAYER_PRECISION = 128, "bf16"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- library runs

def _img_per_s(summary: dict) -> float | None:
    # "(122 img/s)", or with the engine named: "(openvino, 363 img/s)"
    match = re.search(r"[(, ]([\d.]+) img/s\)", str(summary.get("features", "")))
    return float(match.group(1)) if match else None


def _n_extracted(summary: dict) -> tuple[int, int]:
    match = re.match(r"(\d+) extracted, (\d+) from cache", str(summary.get("features", "")))
    return (int(match.group(1)), int(match.group(2))) if match else (-1, -1)


def probe_once(data: str, out: Path, cache: Path, backbone: str, baseline: str | None, seed: int,
               val_fraction: float, **overrides) -> dict:
    """One `run_probe` call, timed from the call to its return; the figures as a flat dict."""
    from transferlab.pipelines.probe import ProbeConfig, run_probe

    config = ProbeConfig(data=data, out=str(out), backbone=backbone, baseline=baseline, seed=seed,
                         val_fraction=val_fraction, cache_dir=str(cache), progress=False, **overrides)
    t0 = time.perf_counter()
    result = run_probe(config)
    wall = time.perf_counter() - t0
    # This process's peak so far: the first (cold) call's own, imports included; later calls can only raise it.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return _figures(result.metrics, result.summary, wall) | {"peak_mib": peak}


def _figures(metrics: dict, summary: dict, wall: float) -> dict:
    val = metrics.get("val", {})
    base = metrics.get("baseline") or {}
    extracted, cached = _n_extracted(summary)
    timings = metrics.get("timings", {})
    return {
        "wall_s": round(wall, 2),
        "accuracy": val.get("accuracy"),
        "macro_f1": val.get("macro_f1"),
        "beats": base.get("beats"),
        "of": base.get("of"),
        "img_per_s": _img_per_s(summary),
        "extracted": extracted,
        "from_cache": cached,
        "timings": timings,
        "resolution": summary.get("resolution"),
        "precision": summary.get("precision"),
        "layers": summary.get("layers"),
        "images": summary.get("images"),
    }


# --------------------------------------------------------------------------- CLI runs

def cli_path() -> Path:
    return Path(sys.executable).with_name("transferlab")


def _cli_env(cache: Path | None = None) -> dict:
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200", TERM="dumb")
    if cache is not None:
        env["TRANSFERLAB_CACHE"] = str(cache)
    return env


def cli_probe_help() -> str | None:
    """`transferlab probe --help` text, or None if the CLI (or its probe command) is missing."""
    exe = cli_path()
    if not exe.exists():
        return None
    try:
        top = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120, env=_cli_env())
        if top.returncode != 0 or "probe" not in top.stdout:
            return None
        sub = subprocess.run([str(exe), "probe", "--help"], capture_output=True, text=True, timeout=120,
                             env=_cli_env())
    except (OSError, subprocess.TimeoutExpired):
        return None
    return sub.stdout if sub.returncode == 0 else None


def cli_probe_command(help_text: str, data: str, out: Path, cache: Path, backbone: str, baseline: str | None,
                      seed: int, val_fraction: float) -> list[str]:
    """Build `transferlab probe ...` from the options its --help lists (the CLI is young)."""
    def has(flag: str) -> bool:
        return re.search(re.escape(flag) + r"(?![\w-])", help_text) is not None

    def first(*flags: str) -> str | None:
        return next((f for f in flags if has(f)), None)

    cmd = [str(cli_path()), "probe"]
    cmd += ["--data", data] if has("--data") else [data]
    for flags, value in [
        (("--out", "--output", "--run-dir"), str(out)),
        (("--backbone",), backbone),
        (("--baseline",), baseline),
        (("--cache-dir", "--cache"), str(cache)),
        (("--seed",), str(seed)),
        (("--val-fraction", "--val"), str(val_fraction)),
    ]:
        flag = first(*flags)
        if flag and value is not None:
            cmd += [flag, value]
    return cmd


def cli_once(cmd: list[str], cache: Path, out: Path) -> dict:
    t0 = time.perf_counter()
    returncode, text, peak = run_with_peak(cmd, env=_cli_env(cache), cwd=str(REPO_ROOT))
    wall = time.perf_counter() - t0
    if returncode != 0:
        tail = text[-2000:]
        log(f"CLI failed (rc {returncode}):\n{tail}")
        return {"wall_s": round(wall, 2), "error": f"rc {returncode}: {tail.strip().splitlines()[-1:]}"}
    metrics_path = out / "metrics.json"
    if metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
        return _figures(metrics, metrics.get("summary", {}), wall) | ({"peak_mib": peak} if peak else {})
    return {"wall_s": round(wall, 2), "error": f"no {metrics_path}"}


# --------------------------------------------------------------------------- default mode

def run_default(args) -> dict:
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="tl-probe-heritage-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    if cache.exists():
        shutil.rmtree(cache)  # cold means cold
    common = dict(data=args.data, backbone=args.backbone, baseline=args.baseline, seed=args.seed,
                  val_fraction=args.val_fraction)
    results: dict[str, dict] = {}
    try:
        log(f"library cold run (cache {cache}) ...")
        results["library cold"] = probe_once(out=work / "run-cold", cache=cache, **common)
        log(f"  {results['library cold']}")
        log("library warm run ...")
        results["library warm"] = probe_once(out=work / "run-warm", cache=cache, **common)
        log(f"  {results['library warm']}")

        cli_commands: dict[str, str] = {}
        help_text = None if args.cli == "off" else cli_probe_help()
        if args.cli != "off" and help_text is None:
            log("CLI: `transferlab probe` not available; library calls only")
        if help_text is not None:
            cli_cache = work / "cli-cache"
            phases = ["cold", "warm"] if args.cli in ("auto", "both") else ["warm"]
            for phase in phases:
                # cold: its own empty cache; warm: the cache the library runs filled (same key).
                use_cache = cli_cache if phase == "cold" else (cli_cache if "cold" in phases else cache)
                out = work / f"cli-{phase}"
                cmd = cli_probe_command(help_text, out=out, cache=use_cache, **common)
                cli_commands[phase] = " ".join(cmd)
                log(f"CLI {phase}: {' '.join(cmd)}")
                results[f"CLI {phase}"] = cli_once(cmd, use_cache, out)
                log(f"  {results[f'CLI {phase}']}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    info = machine_info()
    report = {"date": now(), "command": command_line(args.argv, __file__), "machine": info, "results": results,
              "cli_commands": cli_commands, "cli_available": help_text is not None}
    print_default(report)
    if not args.no_write:
        update_section(f"probe_heritage:{args.backbone}", default_markdown(report, args))
        log("BENCHMARKS.md updated")
    return report


def _target(row: dict, name: str) -> str:
    if "error" in row:
        return "failed"
    if "cold" in name:
        ok = row["wall_s"] < TARGET_COLD_S and (row["accuracy"] or 0) >= TARGET_ACC
        return f"{'met' if ok else 'MISSED'} (< {TARGET_COLD_S / 60:.0f} min, acc >= {TARGET_ACC})"
    ok = row["wall_s"] < TARGET_WARM_S
    return f"{'met' if ok else 'MISSED'} (< {TARGET_WARM_S:.0f} s)"


def _peak(row: dict, name: str) -> str:
    """Peak RSS where it is this run's own: a CLI run's process, or the first library call's."""
    if "peak_mib" not in row or name == "library warm":
        return "-"
    verdict = "met" if row["peak_mib"] < TARGET_PEAK_MIB else "MISSED"
    return f"{row['peak_mib']:.0f} ({verdict}: < {TARGET_PEAK_MIB:.0f})"


def _default_rows(report: dict) -> list[list]:
    rows = []
    for name, r in report["results"].items():
        if "error" in r:
            rows.append([name, fmt(r["wall_s"]), "", "", "", "", "", "", r["error"]])
            continue
        t = r.get("timings", {})
        phases = ", ".join(f"{k} {v:.1f}" for k, v in t.items() if k != "total")
        rows.append([
            name, fmt(r["wall_s"]), fmt(r["accuracy"], 4), fmt(r["macro_f1"], 4), f"{r['beats']}/{r['of']}",
            fmt(r["img_per_s"], 0) if r["img_per_s"] else f"- ({r['from_cache']} cached)",
            phases, _peak(r, name), _target(r, name),
        ])
    return rows


HEADERS = ["run", "wall s", "val acc", "val macro F1", "beats baseline", "extract img/s",
           "phases (s)", "peak RSS MiB", "target"]


def print_default(report: dict) -> None:
    print()
    print(md_table(HEADERS, _default_rows(report)))
    first = next(iter(report["results"].values()))
    print(f"\nresolution {first.get('resolution')}, precision {first.get('precision')}, layers {first.get('layers')}")


def default_markdown(report: dict, args) -> str:
    first = report["results"]["library cold"]
    lines = [
        f"## Probe on Architectural Heritage ({args.backbone})",
        "",
        f"- command: `{report['command']}`",
        f"- date: {report['date']}",
        f"- machine: {machine_line(report['machine'])}",
        f"- data: `{args.data}`, stratified {1 - args.val_fraction:.0%}/{args.val_fraction:.0%} split, "
        f"seed {args.seed}; images {first.get('images')}; baseline `{args.baseline}` (paper per-class F1)",
        f"- settings (library defaults): resolution {first.get('resolution')}, precision "
        f"{first.get('precision')}, layers {first.get('layers')}, classifier logreg",
        "- wall s: the whole `run_probe(...)` call (CLI: the whole subprocess, start-up included); "
        "extract img/s: the library's own figure (images extracted / extraction phase, hashing included); "
        "peak RSS: a CLI run's own process (os.wait4), or the benchmark process after the first library call "
        "(imports included; the warm call's own peak is not separable)",
        "",
        md_table(HEADERS, _default_rows(report)),
    ]
    if report["cli_commands"]:
        lines += ["", "CLI commands (TRANSFERLAB_CACHE set to the run's cache):"]
        lines += [f"- {k}: `{v}`" for k, v in report["cli_commands"].items()]
    elif not report["cli_available"]:
        lines += ["", "The `transferlab` CLI (`transferlab probe`) did not exist when this ran: library call only."]
    return "\n".join(lines)


# --------------------------------------------------------------------------- study

def study_plan() -> list[dict]:
    plan = [{"resolution": r, "precision": p, "layers": "stage-2,head"}
            for r in STUDY_RESOLUTIONS for p in STUDY_PRECISIONS]
    for layers in STUDY_LAYER_SETS:
        cfg = {"resolution": STUDY_LAYER_RES, "precision": STUDY_LAYER_PRECISION, "layers": layers}
        if cfg not in plan:
            plan.append(cfg)
    return plan


def _key(cfg: dict, seed: int | None = None, base_seed: int | None = None) -> str:
    key = f"{cfg['resolution']}px {cfg['precision']} [{cfg['layers']}]"
    return key if seed is None or seed == base_seed else f"{key} seed {seed}"


def _seeds(args) -> list[int]:
    extra = [int(v) for v in str(args.study_seeds).split(",") if v.strip()]
    return [args.seed] + [v for v in extra if v != args.seed]


def _over_seeds(done: dict, cfg: dict, args, field: str) -> list[float]:
    values = []
    for seed in _seeds(args):
        r = done.get(_key(cfg, seed, args.seed))
        if r and "error" not in r and r.get(field) is not None:
            values.append(r[field])
    return values


def _mean_sd(values: list[float]) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.4f} (1)"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} ({len(values)})"


def run_study(args) -> dict:
    cache = Path(args.study_cache)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="tl-probe-study-"))
    results_path = Path(args.study_results)
    done: dict[str, dict] = {}
    if results_path.exists() and not args.fresh:
        for line in results_path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["key"]] = row
    common = dict(data=args.data, backbone=args.backbone, baseline=args.baseline, seed=args.seed,
                  val_fraction=args.val_fraction)
    seeds = _seeds(args)
    try:
        # Seed-major: every configuration once (cold extractions) before the extra seeds, which
        # only re-split and re-fit on cached features (the cache is keyed by file content).
        for seed in seeds:
            for i, cfg in enumerate(study_plan()):
                key = _key(cfg, seed, args.seed)
                if key in done and "error" not in done[key]:
                    log(f"[{i + 1}] {key}: already measured, skipped")
                    continue
                log(f"[{i + 1}] {key} ...")
                try:
                    row = probe_once(out=work / f"run-{i}-{seed}", cache=cache, resolution=cfg["resolution"],
                                     precision=cfg["precision"], layers=cfg["layers"].split(","),
                                     **{**common, "seed": seed})
                except Exception as exc:  # keep going: one failure should not cost the whole grid
                    import traceback
                    traceback.print_exc()
                    row = {"error": f"{type(exc).__name__}: {exc}"}
                row = {"key": key, **cfg, "seed": seed, **row}
                done[key] = row
                with open(results_path, "a") as handle:
                    handle.write(json.dumps(row) + "\n")
                log(f"    {row}")
                if not args.no_write:
                    update_section(f"probe_heritage_study:{args.backbone}", study_markdown(done, args))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if not args.no_write:
        update_section(f"probe_heritage_study:{args.backbone}", study_markdown(done, args))
    print()
    print(md_table(STUDY_HEADERS, _study_rows(done, args)))
    print()
    print("\n".join(study_findings(done, args)))
    return done


STUDY_HEADERS = ["resolution", "precision", "layers", "dims", "val acc", "val macro F1", "beats baseline",
                 "extract img/s", "probe wall s (cold)", "val acc over seeds: mean ± sd (n)",
                 "val macro F1 over seeds"]


def _study_rows(done: dict, args) -> list[list]:
    rows = []
    for cfg in study_plan():
        r = done.get(_key(cfg))
        if r is None:
            rows.append([cfg["resolution"], cfg["precision"], cfg["layers"], "", "(pending)", "", "", "", "", "", ""])
            continue
        if "error" in r:
            rows.append([cfg["resolution"], cfg["precision"], cfg["layers"], "", r["error"], "", "", "", "", "", ""])
            continue
        dims = re.search(r"(\d+) dims", str(r.get("layers")))
        cold = r["extracted"] > 0
        rows.append([
            cfg["resolution"], cfg["precision"], cfg["layers"], dims.group(1) if dims else "",
            fmt(r["accuracy"], 4), fmt(r["macro_f1"], 4), f"{r['beats']}/{r['of']}",
            fmt(r["img_per_s"], 0) if r["img_per_s"] else "(cached)",
            fmt(r["wall_s"]) if cold else f"{fmt(r['wall_s'])} (cache hit)",
            _mean_sd(_over_seeds(done, cfg, args, "accuracy")), _mean_sd(_over_seeds(done, cfg, args, "macro_f1")),
        ])
    return rows


def study_markdown(done: dict, args) -> str:
    info = machine_info()
    return "\n".join([
        f"## Probe defaults study on Architectural Heritage ({args.backbone})",
        "",
        f"- command: `{command_line(args.argv, __file__)}`",
        f"- date: {now()} (last update; rows are written as they finish)",
        f"- machine: {machine_line(info)}",
        f"- data: `{args.data}`, stratified 80/20 split, seed {args.seed}; logreg head; baseline = paper per-class F1",
        "- extract img/s: the library's figure for that run's cold extraction (hashing included). "
        "Rows run one after another on a shared machine, so compare speeds with care; the "
        "same-run ratios are in the extraction throughput section.",
        "",
        md_table(STUDY_HEADERS, _study_rows(done, args)),
        "",
        *study_findings(done, args),
    ])


def study_findings(done: dict, args) -> list[str]:
    """Computed observations: precision effect per resolution, the noise level, the best rows."""
    import math

    ok = {k: r for k, r in done.items()
          if "error" not in r and r.get("accuracy") is not None and r.get("seed", args.seed) == args.seed}
    if not ok:
        return []
    n_val = next((r["images"]["val"] for r in ok.values() if isinstance(r.get("images"), dict)), None)
    lines = []
    if n_val:
        p = statistics.median(r["accuracy"] for r in ok.values())
        se = math.sqrt(p * (1 - p) / n_val)
        lines.append(f"- noise: {n_val} validation images, so one accuracy has a binomial standard error of about "
                     f"{se:.4f} ({se * n_val:.0f} images); differences below ~{2 * se:.3f} are not meaningful.")
    deltas = []
    for res in STUDY_RESOLUTIONS:
        a = ok.get(_key({"resolution": res, "precision": "fp32", "layers": "stage-2,head"}))
        b = ok.get(_key({"resolution": res, "precision": "bf16", "layers": "stage-2,head"}))
        if a and b:
            deltas.append(f"{res}px {b['accuracy'] - a['accuracy']:+.4f}")
    if deltas:
        lines.append("- bf16 minus fp32 validation accuracy (stage-2,head): " + ", ".join(deltas) + ".")
    if len(_seeds(args)) > 1:
        paired = []
        for res in STUDY_RESOLUTIONS:
            a = _over_seeds(done, {"resolution": res, "precision": "fp32", "layers": "stage-2,head"}, args, "accuracy")
            b = _over_seeds(done, {"resolution": res, "precision": "bf16", "layers": "stage-2,head"}, args, "accuracy")
            if a and len(a) == len(b):
                d = [y - x for x, y in zip(a, b)]
                paired.append(f"{res}px {statistics.mean(d):+.4f} (bf16 higher in {sum(v > 0 for v in d)}/{len(d)})")
        if paired:
            lines.append(f"- same, paired over {len(_seeds(args))} seeds (split seeds {', '.join(map(str, _seeds(args)))}): "
                         + ", ".join(paired) + ".")
        base = {"resolution": STUDY_LAYER_RES, "precision": STUDY_LAYER_PRECISION, "layers": "stage-2,head"}
        ref = _over_seeds(done, base, args, "accuracy")
        comps = []
        for cfg in study_plan():
            if cfg == base:
                continue
            v = _over_seeds(done, cfg, args, "accuracy")
            if ref and len(v) == len(ref):
                d = [y - x for x, y in zip(ref, v)]
                comps.append(f"{_key(cfg)} {statistics.mean(d):+.4f} (higher in {sum(x > 0 for x in d)}/{len(d)})")
        if comps:
            lines.append(f"- accuracy relative to {_key(base)}, paired over seeds: " + "; ".join(comps) + ".")
    best = max(ok.values(), key=lambda r: (r["accuracy"], r["macro_f1"]))
    lines.append(f"- best accuracy: {best['key']} at {best['accuracy']:.4f} (macro F1 {best['macro_f1']:.4f}, "
                 f"beats {best['beats']}/{best['of']}).")
    return lines


# --------------------------------------------------------------------------- main

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--data", default=DATA_DEFAULT, help="class-per-folder image tree (default: %(default)s)")
    p.add_argument("--baseline", default=BASELINE_DEFAULT, help="per-class F1 CSV (default: %(default)s)")
    p.add_argument("--backbone", default="tf_efficientnet_lite0", help="default: %(default)s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--cli", choices=["auto", "off", "warm", "both"], default="auto",
                   help="also time `transferlab probe` if the CLI exists: auto/both = cold and warm, "
                        "warm = only warm on the library's cache, off = never (default: %(default)s)")
    p.add_argument("--study", action="store_true", help="run the resolution/precision/layers grid instead")
    p.add_argument("--study-cache", default=os.path.join(tempfile.gettempdir(), "transferlab-study-cache"),
                   help="feature cache for the study, kept between runs (default: %(default)s)")
    p.add_argument("--study-results", default=os.path.join(tempfile.gettempdir(), "transferlab-study.jsonl"),
                   help="JSON lines file the study appends each row to (default: %(default)s)")
    p.add_argument("--study-seeds", default="",
                   help="study: extra split seeds (comma-separated) run on the cached features of every "
                        "configuration, for mean ± sd and paired differences (default: none)")
    p.add_argument("--fresh", action="store_true", help="study: ignore rows already in --study-results")
    p.add_argument("--work-dir", help="where run folders go (default: a temporary dir, removed afterwards)")
    p.add_argument("--keep", action="store_true", help="keep the run folders")
    p.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.study:
        run_study(args)
    else:
        run_default(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
