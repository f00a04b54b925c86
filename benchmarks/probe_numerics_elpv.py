"""How far elpv's default-probe figures move with the arithmetic alone: the same probe (backbone,
layers, classifier, split) with its features extracted by torch or OpenVINO, in fp32 or bf16.

Issue 13's elpv target is relative to the default probe at seed 0 (0.766 / 0.577 when it was
filed). This measures how much of that reference is the rounding of the features: per seed,
the spread between the four numerics is the noise floor any gain over the default probe must
clear before it means anything.

usage: .venv/bin/python benchmarks/probe_numerics_elpv.py [--seeds 0,1,2,3,4] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _auto import log, transferlab, workdir
from _common import command_line, machine_info, machine_line, md_table, now, update_section

from transferlab.data.demo import prepare_elpv_folder

NUMERICS = [("torch", "fp32"), ("torch", "bf16"), ("openvino", "fp32"), ("openvino", "bf16")]


def probe(data: str, work: Path, engine: str, precision: str, seed: int) -> dict:
    """The default probe with this engine and precision; each setting keeps its own feature cache,
    so the later seeds refit on the features extracted once."""
    out = work / f"{engine}-{precision}-s{seed}"
    args = ["probe", data, "--out", str(out), "--engine", engine, "--precision", precision, "--seed", str(seed),
            "--cache-dir", str(work / f"cache-{engine}-{precision}"), "--quiet"]
    log(f"probe {engine} {precision} seed {seed}")
    wall, peak = transferlab(*args)
    val = json.loads((out / "metrics.json").read_text())["val"]
    return {"engine": engine, "precision": precision, "seed": seed, "accuracy": val["accuracy"],
            "macro_f1": val["macro_f1"], "wall": wall, "peak_mib": peak, "command": "transferlab " + " ".join(args)}


def tables(results: list[dict], seeds: list[int]) -> str:
    at = {(r["engine"], r["precision"], r["seed"]): r for r in results}
    rows = []
    for engine, precision in NUMERICS:
        runs = [at[engine, precision, s] for s in seeds]
        rows.append([f"{engine} {precision}"] + [f"{r['accuracy']:.4f} / {r['macro_f1']:.4f}" for r in runs]
                    + [f"{np.mean([r['accuracy'] for r in runs]):.4f} / {np.mean([r['macro_f1'] for r in runs]):.4f}"])
    spread = ["spread (max - min), points"]
    for seed in seeds:
        runs = [at[e, p, seed] for e, p in NUMERICS]
        accuracy, f1 = ([r[k] for r in runs] for k in ("accuracy", "macro_f1"))
        spread.append(f"{(max(accuracy) - min(accuracy)) * 100:.1f} / {(max(f1) - min(f1)) * 100:.1f}")
    rows.append(spread + ["-"])
    return md_table(["features", *[f"seed {s}" for s in seeds], "mean"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds: each splits the images anew")
    parser.add_argument("--work")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    work = workdir("tl-numerics-elpv-") if args.work is None else Path(args.work)
    data = str(prepare_elpv_folder(work / "elpv"))
    results = [probe(data, work, engine, precision, seed) for engine, precision in NUMERICS for seed in seeds]
    walls, peak = [r["wall"] for r in results], max(r["peak_mib"] for r in results)
    body = f"""## The default probe on elpv under four numerics

- command: `{command_line(None, "benchmarks/probe_numerics_elpv.py")}`
- date: {now()}
- machine: {machine_line(machine_info())}
- each cell: `{results[0]['command']}` with that engine, precision and seed: validation accuracy / macro F1
- peak RSS of a probe: {peak:.0f} MiB at most; wall {min(walls):.0f}-{max(walls):.0f} s (later seeds reuse the features)

{tables(results, seeds)}

In the bf16 rows the classifier is fitted on bf16 features and scored on fp32 ones (as predict and
serve compute them); in the fp32 rows it is fitted and scored on fp32 features. Nothing else differs
within a column: the spread row is how far the default probe's own figures move with no change of method.
"""
    update_section("probe_numerics_elpv", body)
    print(body)


if __name__ == "__main__":
    main()
