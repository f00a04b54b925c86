"""The statistics of a study: mean ± sd over seeds, paired differences, McNemar, noise level.

Runs with the same seed share their train/val split, so a variant and the reference are
scored on the same validation images: the fair test of "is it better" is then McNemar's,
on the images exactly one of the two got right (a coin toss if neither is better).
"""

from __future__ import annotations

import math
import statistics

from scipy.stats import binomtest

ALPHA = 0.05


def mean_sd(values: list[float | None]) -> dict | None:
    """{"mean", "sd", "n"} of the values present; sd only from two values on. None when none is."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None
    sd = statistics.stdev(present) if len(present) >= 2 else None
    return {"mean": statistics.fmean(present), "sd": sd, "n": len(present)}


def mcnemar_p(better: int, worse: int) -> float:
    """Exact two-sided McNemar p-value: is a better/worse split of the discordant images a coin toss?"""
    if better + worse == 0:
        return 1.0  # no image on which the two disagree: nothing to tell them apart
    return float(binomtest(better, better + worse, 0.5).pvalue)


def discordant(variant: dict[str, bool], reference: dict[str, bool]) -> tuple[int, int, int]:
    """(images only the variant got right, images only the reference got right, images both scored)."""
    shared = variant.keys() & reference.keys()
    better = sum(1 for path in shared if variant[path] and not reference[path])
    worse = sum(1 for path in shared if reference[path] and not variant[path])
    return better, worse, len(shared)


def binomial_se(accuracy: float, n: float) -> float:
    """Standard error of an accuracy measured on n images: sqrt(p(1-p)/n)."""
    return math.sqrt(accuracy * (1.0 - accuracy) / n) if n > 0 else float("nan")


def verdict(better: int, worse: int, p_value: float | None) -> str:
    """Plain words for a pooled McNemar result."""
    if p_value is None:
        return "not paired"
    if p_value >= ALPHA:
        return "within noise"
    return "better" if better > worse else "worse"


def noise_level(accuracy: float, n_val: float) -> dict:
    """The reference's sampling noise: the standard error, and what one image is worth, in points."""
    se = binomial_se(accuracy, n_val)
    return {"n_val": n_val, "accuracy": accuracy, "se": se, "se_points": 100.0 * se,
            "image_points": 100.0 / n_val if n_val else None}


def noise_text(noise: dict | None) -> str:
    """One sentence a reader can hold every difference against."""
    if noise is None:
        return "No reference variant: no noise level or paired test."
    n = noise["n_val"]
    images = f"{n:.0f}" if float(n).is_integer() else f"{n:.1f} (mean over seeds)"
    text = (f"Noise level: the reference accuracy {100 * noise['accuracy']:.1f}% is measured on {images} "
            f"validation images, so its binomial standard error is ±{noise['se_points']:.1f} points "
            f"(one image = {noise['image_points']:.2f} points); a difference within about twice that can be chance.")
    if noise["accuracy"] in (0.0, 1.0):
        text += " At 0% or 100% the binomial formula gives 0: the true noise is at least one image."
    return text


EXPLANATION = (
    "Each variant is compared with the reference run of the same seed, on the validation images both scored: "
    "'won' counts the images only the variant got right, 'lost' those only the reference got right, and the exact "
    "McNemar test (pooled over seeds) asks whether that split could be a coin toss. "
    f"p < {ALPHA} is reported as better or worse, anything else as within noise; mean ± sd is over seeds."
)
