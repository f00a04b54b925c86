"""What scores an ensemble's members: torch fp32 against OpenVINO fp32, same members, same run.

`transferlab ensemble` scores every member's branch of the ensemble network on the validation
images (inference/member_scoring.py). This times that step with `--engine torch` and
`--engine openvino`, alternating, each a fresh process, on members given with --runs, or by
default on three fresh probes of the elpv demo data (tf_efficientnet_lite0/1/2, default
settings, seed 0) with --tta flip on every member, as `transferlab auto` runs them there.

Per engine and round: the scoring seconds the run recorded (metrics.json timings: decoding,
export and compile included), the command's wall time and peak RSS, validation accuracy and
macro F1 (out of fold), and the largest difference of the ensemble's saved probabilities
from torch's.

usage: .venv/bin/python benchmarks/ensemble_scoring.py [--runs R1,R2,...] [--rounds 2] [--work DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _auto import transferlab, workdir  # noqa: E402
from _common import command_line, machine_info, machine_line, md_table, now, update_section  # noqa: E402

ENGINES = ("torch", "openvino")
PROBES = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def elpv_members(work: Path) -> list[str]:
    from transferlab.data.demo import prepare_elpv_folder

    data = str(prepare_elpv_folder(work / "elpv"))
    runs = []
    for backbone in PROBES:
        out = work / f"probe-{backbone.rsplit('_', 1)[-1]}"
        if not (out / "metrics.json").is_file():
            log(f"probe {backbone}")
            transferlab("probe", data, "--backbone", backbone, "--out", str(out), "--cache-dir",
                        str(work / "cache"), "--quiet")
        runs.append(str(out))
    return runs


def probabilities(run: Path) -> list[list[float]]:
    with open(run / "predictions.csv", newline="", encoding="utf-8") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda r: r["path"])
    return [[float(v) for k, v in r.items() if k.startswith("p_")] for r in rows]


def score(runs: list[str], engine: str, out: Path, tta: str) -> dict:
    args = ["ensemble", *runs, "--method", "select", "--engine", engine, "--out", str(out), "--quiet"]
    if tta != "own":
        args += ["--tta", tta]
    wall, peak = transferlab(*args)
    metrics = json.loads((out / "metrics.json").read_text())
    val = metrics["ensemble"]["ensemble"]["val"]
    return {"engine": engine, "score": metrics["timings"]["score"], "wall": wall, "peak": peak,
            "accuracy": val["accuracy"], "macro_f1": val["macro_f1"], "probs": probabilities(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", help="comma-separated member run folders (default: three elpv probes)")
    parser.add_argument("--tta", default="flip", help="every member's --tta, or 'own' (default flip)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work")
    args = parser.parse_args()
    work = workdir("tl-ens-scoring-") if args.work is None else Path(args.work)
    runs = args.runs.split(",") if args.runs else elpv_members(work)
    results = []
    for round_ in range(args.rounds):
        for engine in ENGINES if round_ % 2 == 0 else reversed(ENGINES):  # alternate who goes first
            log(f"round {round_ + 1}: ensemble --engine {engine}")
            results.append(score(runs, engine, work / f"ensemble-{engine}-{round_}", args.tta) | {"round": round_ + 1})
    reference = next(r["probs"] for r in results if r["engine"] == "torch")
    torch_score = {r["round"]: r["score"] for r in results if r["engine"] == "torch"}
    rows = []
    for r in sorted(results, key=lambda r: (r["round"], r["engine"])):
        diff = max(abs(a - b) for row, ref in zip(r["probs"], reference) for a, b in zip(row, ref))
        rows.append([r["round"], r["engine"], f"{r['score']:.1f}", f"{torch_score[r['round']] / r['score']:.2f}x",
                     f"{r['wall']:.1f}", f"{r['peak']:.0f}", f"{r['accuracy']:.4f}", f"{r['macro_f1']:.4f}",
                     f"{diff:.1e}"])
    info = machine_info()
    body = "\n".join([
        "## Ensemble scoring: torch fp32 against OpenVINO fp32 (the same members)", "",
        f"- command: `{command_line(script='benchmarks/ensemble_scoring.py')}`",
        f"- date: {now()}", f"- machine: {machine_line(info)}",
        f"- members: {', '.join(runs)}; `transferlab ensemble --method select --tta {args.tta}`"
        if args.tta != "own" else f"- members: {', '.join(runs)}; `transferlab ensemble --method select`",
        "- score s: the run's own timing of its scoring step (decoding the validation images, and for OpenVINO "
        "each member's export and compile, included); speed-up = torch's score s over this engine's in the same "
        "round; wall and peak RSS: the whole command in its own process (os.wait4)",
        "- max |p - torch|: the largest difference of the ensemble's saved validation probabilities "
        "(predictions.csv) from torch's first round", "",
        md_table(["round", "engine", "score s", "speed-up", "wall s", "peak RSS MiB", "val accuracy (out of fold)",
                  "val macro F1", "max abs p - torch"], rows)])
    update_section("ensemble_scoring", body)
    print(body)


if __name__ == "__main__":
    main()
