"""Where each variant sits on its factor's plot: numeric axes, the learning curve, categories.

A factor whose values are all numbers gets a numeric x axis (logarithmic when they span
more than a factor of LOG_RATIO, as learning rates do). `train_per_class` (and `per_class`) is the learning curve:
x is the mean number of training images per class each run actually had (split.json), so
"all" sits where the full data set really is. Anything else is categorical, one point per
value in the order the study listed them.
"""

from __future__ import annotations

import json
import math

from transferlab.insight.study_runs import printable
from transferlab.insight.study_stats import mean_sd

# train_per_class keeps the validation set (a fair curve); per_class shrinks it too.
LEARNING_CURVES = ("train_per_class", "per_class")
# Words for None ("not set") of the keys where it has a meaning of its own.
UNSET_LABELS = {"per_class": "all", "train_per_class": "all", "resolution": "auto"}
# The measured run figure that places a None value on a numeric axis ("auto" resolution -> the one used).
MEASURED = {"resolution": "resolution"}
LOG_RATIO = 20.0


def value_text(factor: str | None, value) -> str:
    """A short label of a setting's value for tables and plot ticks."""
    if value is None:
        return UNSET_LABELS.get(factor or "", "default")
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, dict)):
        return printable(json.dumps(value, ensure_ascii=False), 60)
    return printable(str(value), 60)


def _key(value) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _number(value) -> float | None:
    """A finite number; numeric text too (YAML 1.1 reads 1e-3 as a string)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _groups(entries: list[dict], factor: str, factorial: bool) -> list[tuple[object, list[dict]]]:
    """(value, variant entries) for each point of the factor's plot, in first-seen order."""
    groups: dict[str, tuple[object, list[dict]]] = {}
    for entry in entries:
        if factorial or entry["reference"]:
            value = entry["values"].get(factor)  # as set, or as the run's config recorded it
        elif entry["factor"] == factor:
            value = entry["value"]
        else:
            continue
        groups.setdefault(_key(value), (value, []))[1].append(entry)
    # The reference first, so that categories without a listed order start from it.
    return sorted(groups.values(), key=lambda group: not any(e["reference"] for e in group[1]))


def _x(factor: str, value, runs: list[dict]) -> float | None:
    """The point's numeric x, or None when it has none (the axis is then categorical)."""
    if factor in LEARNING_CURVES:
        counts = [r["train_per_class"] for r in runs]
        return None if None in counts else sum(counts) / len(counts)
    number = _number(value)
    if number is None and value is None and factor in MEASURED:
        measured = [r.get(MEASURED[factor]) for r in runs]
        number = None if None in measured else sum(measured) / len(measured)
    return number


def _point(factor: str, value, members: list[dict]) -> dict:
    runs = [run for entry in members for run in entry["runs"]]
    return {
        "label": value_text(factor, value), "value": value, "x": _x(factor, value, runs),
        "reference": any(e["reference"] for e in members), "variants": [e["variant"] for e in members],
        "accuracy": mean_sd([r["accuracy"] for r in runs]), "macro_f1": mean_sd([r["macro_f1"] for r in runs]),
        "n_runs": len(runs),
    }


def _ordered(points: list[dict], order: list) -> list[dict]:
    """Categorical points in the listed order of their values; values not listed keep their place, after."""
    rank = {_key(v): i for i, v in enumerate(order)}
    return sorted(points, key=lambda p: rank.get(_key(p["value"]), len(rank)))


def factor_plot(entries: list[dict], factor: str, factorial: bool, order: list | None = None) -> dict:
    """What one factor's plot draws: points with mean ± sd over runs, and how to lay out x."""
    points = [_point(factor, value, members) for value, members in _groups(entries, factor, factorial)]
    numeric = bool(points) and all(p["x"] is not None for p in points)
    if numeric:
        points.sort(key=lambda p: p["x"])
    else:
        points = _ordered(points, order or [])
        for index, point in enumerate(points):
            point["x"] = float(index)
    xs = [p["x"] for p in points]
    curve = factor in LEARNING_CURVES and numeric
    return {
        "factor": factor,
        "title": "Learning curve" if curve else factor,
        "x_label": "training images per class (mean over classes)" if curve else factor,
        "numeric": numeric,
        "log_x": numeric and len(xs) > 1 and min(xs) > 0 and max(xs) / min(xs) >= LOG_RATIO,
        "learning_curve": curve,
        "averaged": factorial,  # each point then pools every combination of the other factors
        "points": points,
    }


def factor_plots(entries: list[dict], factors: list[str], factorial: bool, orders: dict[str, list]) -> list[dict]:
    return [factor_plot(entries, factor, factorial, orders.get(factor)) for factor in factors]
