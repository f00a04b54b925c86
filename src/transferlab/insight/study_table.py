"""A study's summary: one entry per variant, mean ± sd over seeds, paired differences
against the reference, and the points each factor's plot draws. Plus study.csv.

The summary is plain JSON-able data (study.json's "summary"); report/study_report.py draws
it. Runs are read with the checked readers of study_runs: a malformed run folder stops
the summary with one line naming the file.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from transferlab.atomic import write_text
from transferlab.insight.study_axes import factor_plots, value_text
from transferlab.insight.study_runs import RunFigures, read_run_figures
from transferlab.insight.study_stats import (
    EXPLANATION,
    binomial_se,
    discordant,
    mcnemar_p,
    mean_sd,
    noise_level,
    noise_text,
    verdict,
)


@dataclass
class VariantRun:
    """One finished run (run.json status complete) of one variant and seed."""

    variant: str  # label, e.g. "augment=none" or "reference"
    settings: dict  # key -> value this variant sets (plain data), {} for nothing changed
    factor: str | None  # the single varied key in a one-factor study (None: the reference, or factorial)
    value: object  # that key's value (plain data; None means "default", e.g. per_class=all)
    seed: int
    run_dir: Path
    reference: bool  # True for the study's reference variant


@dataclass
class _Variant:
    """A variant's runs, read: what the summary is computed from."""

    first: VariantRun
    runs: dict[int, RunFigures]  # seed -> figures


def _group(runs: list[VariantRun], split: str) -> list[_Variant]:
    variants: dict[str, _Variant] = {}
    for run in runs:
        entry = variants.setdefault(run.variant, _Variant(run, {}))
        if run.seed in entry.runs:
            raise ValueError(f"variant {run.variant!r} has two runs with seed {run.seed}")
        entry.runs[run.seed] = read_run_figures(run.run_dir, split)
    references = {v.first.variant for v in variants.values() if v.first.reference}
    if len(references) > 1:
        raise ValueError(f"more than one reference variant: {sorted(references)}")
    return list(variants.values())


def _figure_stats(figures: list[RunFigures]) -> dict:
    """Mean ± sd over seeds of what each run measured."""
    classes = list(dict.fromkeys(c for f in figures for c in f.per_class))
    beats = [f for f in figures if f.beats is not None and f.of is not None]
    parameters = {f.parameters for f in figures}
    return {
        "accuracy": mean_sd([f.accuracy for f in figures]),
        "macro_f1": mean_sd([f.macro_f1 for f in figures]),
        "per_class_f1": {c: mean_sd([f.per_class.get(c) for f in figures]) for c in classes},
        "seconds": mean_sd([f.seconds for f in figures]),
        "beats": {**mean_sd([f.beats for f in beats]), "of": max(f.of for f in beats)} if beats else None,
        # The same architecture in every seed; the largest shown if a run differs (it should not).
        "parameters": max((p for p in parameters if p is not None), default=None),
        "n_val": mean_sd([f.n_val for f in figures]),
        "train_per_class": mean_sd([f.train_per_class for f in figures]),
    }


def _run_entry(seed: int, figures: RunFigures) -> dict:
    return {"seed": seed, "run_dir": str(figures.run_dir), "kind": figures.kind, "accuracy": figures.accuracy,
            "macro_f1": figures.macro_f1, "seconds": figures.seconds, "n_val": figures.n_val,
            "train_per_class": figures.train_per_class, "resolution": figures.resolution,
            "parameters": figures.parameters, "beats": figures.beats, "of": figures.of}


def paired_against(variant: _Variant, reference: _Variant) -> dict:
    """Per seed and pooled: accuracy and macro-F1 differences, won/lost images, exact McNemar."""
    per_seed = []
    for seed in sorted(variant.runs.keys() & reference.runs.keys()):
        ours, ref = variant.runs[seed], reference.runs[seed]
        better, worse, shared = discordant(ours.correct, ref.correct)
        per_seed.append({"seed": seed, "accuracy_diff": ours.accuracy - ref.accuracy,
                         "macro_f1_diff": ours.macro_f1 - ref.macro_f1, "better": better, "worse": worse,
                         "shared": shared, "same_images": shared == ours.n_val == ref.n_val,
                         "p_value": mcnemar_p(better, worse)})
    better, worse = sum(s["better"] for s in per_seed), sum(s["worse"] for s in per_seed)
    # Summing the discordant counts over seeds pools the evidence of every split.
    p_value = mcnemar_p(better, worse) if any(s["shared"] for s in per_seed) else None
    return {
        "seeds": per_seed,
        "accuracy_diff": mean_sd([s["accuracy_diff"] for s in per_seed]),
        "macro_f1_diff": mean_sd([s["macro_f1_diff"] for s in per_seed]),
        "better": better, "worse": worse, "shared": sum(s["shared"] for s in per_seed),
        "same_images": bool(per_seed) and all(s["same_images"] for s in per_seed),
        "p_value": p_value, "verdict": verdict(better, worse, p_value),
    }


def _values(variant: _Variant, factors: list[str]) -> dict:
    """Each factor's value in this variant: as it sets it, else as its run's config.yaml recorded it."""
    run = variant.runs[min(variant.runs)]
    return {k: variant.first.settings[k] if k in variant.first.settings else run.setting(k) for k in factors}


def _variant_entry(variant: _Variant, reference: _Variant | None, factors: list[str]) -> dict:
    first = variant.first
    figures = [variant.runs[s] for s in sorted(variant.runs)]
    paired = None if reference is None or variant is reference else paired_against(variant, reference)
    stats = _figure_stats(figures)
    return {
        "variant": first.variant, "settings": first.settings, "factor": first.factor, "value": first.value,
        "value_label": value_text(first.factor, first.value) if first.factor else "",
        "values": _values(variant, factors),
        "reference": variant is reference, "kind": figures[0].kind,
        "seeds": sorted(variant.runs), "n_seeds": len(figures),
        **stats,
        # This variant's own sampling noise: per_class, for one, shrinks its validation set too.
        "se_points": 100.0 * binomial_se(stats["accuracy"]["mean"], stats["n_val"]["mean"]),
        "runs": [_run_entry(seed, variant.runs[seed]) for seed in sorted(variant.runs)],
        "paired": paired,
    }


def _notes(variants: list[_Variant], reference: _Variant | None, entries: list[dict]) -> list[str]:
    notes = []
    if reference is None:
        notes.append("No reference variant among the runs: no paired differences.")
    differing = [e["variant"] for e in entries if e["paired"] and e["paired"]["seeds"]
                 and not e["paired"]["same_images"]]
    if differing:
        notes.append("Validation images differ from the reference's for " + ", ".join(differing)
                     + " (e.g. per_class holds out fewer images): McNemar uses the images both runs scored.")
    kinds = {f.kind for v in variants for f in v.runs.values()}
    if "probe" in kinds:
        notes.append("Parameters count the numbers in model/*.safetensors: for probe runs the saved backbone "
                     "(weights and buffers), not the classical head.")
    return notes


def summarise_study(runs: list[VariantRun], *, split: str = "val",
                    orders: dict[str, list] | None = None) -> dict:
    """The study's summary as JSON-able data (see the module docstring of study_report for its use).

    `orders` gives, per factor, its values in the order listed on the command line (the
    reference's value among them), for the order of categorical plot points; otherwise the
    reference comes first, then the variants in the order of `runs`.
    """
    if not runs:
        raise ValueError("a study summary needs at least one run")
    variants = _group(runs, split)
    reference = next((v for v in variants if v.first.reference), None)
    factors = list(dict.fromkeys([r.factor for r in runs if r.factor] + [k for r in runs for k in r.settings]))
    entries = [_variant_entry(v, reference, factors) for v in variants]
    ref_entry = next((e for e in entries if e["reference"]), None)
    noise = (noise_level(ref_entry["accuracy"]["mean"], ref_entry["n_val"]["mean"]) if ref_entry else None)
    # One-factor variants name their factor; a variant that names none and is not the reference is a combination.
    factorial = any(v.first.factor is None and not v.first.reference for v in variants)
    return {
        "split": split,
        "factorial": factorial,
        "factors": factors,
        "seeds": sorted({r.seed for r in runs}),
        "classes": list(dict.fromkeys(c for e in entries for c in e["per_class_f1"])),
        "reference": ref_entry["variant"] if ref_entry else None,
        "noise": None if noise is None else {**noise, "text": noise_text(noise)},
        "explanation": EXPLANATION,
        "variants": entries,
        "plots": factor_plots(entries, factors, factorial, orders or {}),
        "notes": _notes(variants, reference, entries),
    }


# --------------------------------------------------------------------------- study.csv


def _text(value) -> str:
    """A CSV cell; text that a spreadsheet would run as a formula is quoted with a leading '."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _stat(stats: dict | None, key: str):
    return stats.get(key) if stats else None


def _csv_row(entry: dict, classes: list[str]) -> list:
    paired = entry["paired"] or {}
    row = [entry["variant"], entry["reference"], entry["factor"], entry["value_label"], entry["settings"],
           entry["n_seeds"], " ".join(str(s) for s in entry["seeds"])]
    for key in ("accuracy", "macro_f1"):
        row += [_stat(entry[key], "mean"), _stat(entry[key], "sd")]
    for key in ("accuracy_diff", "macro_f1_diff"):
        row += [_stat(paired.get(key), "mean"), _stat(paired.get(key), "sd")]
    row += [paired.get("better"), paired.get("worse"), paired.get("p_value"), paired.get("verdict"),
            _stat(entry["beats"], "mean"), _stat(entry["beats"], "of"),
            _stat(entry["seconds"], "mean"), _stat(entry["seconds"], "sd"), entry["parameters"],
            _stat(entry["n_val"], "mean"), entry["se_points"], _stat(entry["train_per_class"], "mean")]
    for name in classes:
        row += [_stat(entry["per_class_f1"].get(name), "mean"), _stat(entry["per_class_f1"].get(name), "sd")]
    return row


CSV_HEADER = ["variant", "reference", "factor", "value", "settings", "n_seeds", "seeds",
              "accuracy_mean", "accuracy_sd", "macro_f1_mean", "macro_f1_sd",
              "accuracy_diff_mean", "accuracy_diff_sd", "macro_f1_diff_mean", "macro_f1_diff_sd",
              "won", "lost", "mcnemar_p", "verdict", "beats_mean", "beats_of", "seconds_mean", "seconds_sd",
              "parameters", "n_val_mean", "se_points", "train_per_class_mean"]


def write_study_csv(summary: dict, path: Path) -> None:
    """study.csv: one row per variant (mean/sd over seeds, the paired test, per-class F1 mean/sd)."""
    classes = summary["classes"]
    header = CSV_HEADER + [f"f1_{name}_{stat}" for name in classes for stat in ("mean", "sd")]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([_text(h) for h in header])
    for entry in summary["variants"]:
        writer.writerow([_text(v) for v in _csv_row(entry, classes)])
    write_text(Path(path), buffer.getvalue())
