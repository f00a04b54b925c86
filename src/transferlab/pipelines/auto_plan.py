"""The bookkeeping of `transferlab auto`: the budget, the cost estimates, and the decision log.

Costs are estimated from this machine's measured throughput (the ranking step times feature
extraction of a subsample with each backbone) in units of "passes": one forward pass of a
backbone over every image of the folder, decoding included. A probe is about one pass; the
fast fine-tune recipe about `FINETUNE_PASSES` (calibrated on Architectural Heritage: cached
activations of 4 augmentation draws, then 12 epochs of the top group, then the evaluation).
After every step the ratio of measured to estimated time rescales the estimates still to
come, so a machine slower than the calibration (or a busy one) shrinks the plan instead of
overrunning the budget.

Every decision goes to `plan.md` with its reason and the figure behind it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from transferlab.atomic import write_text

# Fast recipe / one pass as the ranking measures it (a few batches, start-up included, so slower
# than a long extraction): heritage lite1 at 128 px took 216 s against 61 s for one pass (3.5)
# with 6 epochs of the top group and a bf16 evaluation; auto's 12 epochs add about 45 s and the
# fp32 evaluation about 20 s (4.6); 6.0 keeps a margin for data whose decoding or activations cost more.
FINETUNE_PASSES = 6.0
PROBE_PASSES = 1.2  # extraction, fit, evaluation and report
# Every member re-scored on the validation images, per view, in fp32 (extraction, which the
# ranking times, runs in bf16). In torch: measured 1.6-3.5 passes on heritage and elpv (1.5
# overran an elpv 10-minute budget by 24%). Compiled by OpenVINO, still fp32 (what
# `transferlab ensemble` does where it can, inference/member_scoring.py): 0.58-0.78 on elpv
# (three probes with flip; four runs without; torch took 2.6-3x as long on the same members,
# benchmarks/ensemble_scoring.py), 0.74 on heritage (six runs with flip: 101 s, where earlier
# runs in torch took 5-6 min), so 1.2 keeps a margin of 1.5-2x.
ENSEMBLE_VAL_PASSES = 3.5
ENSEMBLE_COMPILED_PASSES = 1.2
FIXED_SECONDS = 8.0  # per step: model load, report, process start-up
SAFETY = 1.15  # plans keep this margin on every estimate


@dataclass
class Budget:
    """Wall-clock seconds for the whole command; `spent` carries over a killed run's time.

    The measured/estimated ratio is learnt per kind of step: probes run on the fast extraction
    engine, fine-tunes and ensemble scoring on PyTorch, so a probe's speed says little about a
    fine-tune's. A kind not measured yet takes the slowest ratio seen so far, never below 1: a
    busy machine slows everything, a fast engine speeds up only its own steps.
    """

    seconds: float
    spent: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    scales: dict[str, float] = field(default_factory=dict)  # step kind -> measured / estimated

    def used(self) -> float:
        return self.spent + time.perf_counter() - self.started

    def left(self) -> float:
        return self.seconds - self.used()

    def scale(self, kind: str) -> float:
        if kind in self.scales:
            return self.scales[kind]
        return max([1.0, *self.scales.values()])

    def needed(self, kind: str, estimate: float, reserve: float = 0.0, reserve_kind: str = "ensemble") -> float:
        """Seconds a step must find left: its estimate, rescaled by what this kind took so far,
        with the SAFETY margin, plus the (rescaled) room it keeps for a later step."""
        return estimate * self.scale(kind) * SAFETY + reserve * self.scale(reserve_kind)

    def fits(self, kind: str, estimate: float, reserve: float = 0.0, reserve_kind: str = "ensemble") -> bool:
        return self.needed(kind, estimate, reserve, reserve_kind) <= self.left()

    def shortfall(self, kind: str, estimate: float, reserve: float = 0.0, reserve_kind: str = "ensemble") -> str:
        """Why a step does not fit, in figures that add up: what it needs, margin included, and what is left."""
        return (f"needs {seconds_text(self.needed(kind, estimate, reserve, reserve_kind))} with a "
                f"{SAFETY - 1:.0%} margin (estimate {seconds_text(estimate * self.scale(kind))}"
                + (f" + {seconds_text(reserve * self.scale(reserve_kind))} kept for the {reserve_kind}"
                   if reserve else "")
                + f"), {seconds_text(self.left())} left")

    def learn(self, kind: str, estimated: float, measured: float) -> None:
        """Rescale later estimates of this kind by what this step really took (gradually: one
        lucky step does not undo a slow machine)."""
        if estimated > 0 and measured > 0:
            before = self.scales.get(kind, 1.0)
            self.scales[kind] = max(0.3, 0.5 * before + 0.5 * measured / estimated)


@dataclass
class Throughput:
    """Measured on this machine by the ranking step: seconds per image of one backbone pass."""

    seconds_per_image: dict[str, float]  # backbone -> seconds per image (decode + forward)
    images: int  # images in the folder (train + validation)
    val_images: int
    ensemble_passes: float = ENSEMBLE_VAL_PASSES  # per member and view: ENSEMBLE_COMPILED_PASSES with OpenVINO

    def probe(self, backbone: str) -> float:
        return FIXED_SECONDS + PROBE_PASSES * self.seconds_per_image[backbone] * self.images

    def finetune(self, backbone: str) -> float:
        return FIXED_SECONDS + FINETUNE_PASSES * self.seconds_per_image[backbone] * self.images

    def views(self, backbone: str, views: int, cost: float = 1.0) -> float:
        """Predicting the validation images again, `views` passes each (test-time augmentation);
        `cost`: the run's pixel ratio to the ranking's resolution."""
        return FIXED_SECONDS + views * cost * self.seconds_per_image[backbone] * self.val_images

    def ensemble(self, backbones: list[str], costs: list[float] | None = None) -> float:
        """Scoring the validation images with every member; `costs`: each member's pixel ratio."""
        costs = [1.0] * len(backbones) if costs is None else costs
        per_image = sum(c * self.seconds_per_image[b] for b, c in zip(backbones, costs, strict=True))
        return FIXED_SECONDS + self.ensemble_passes * per_image * self.val_images

    def relative_to(self, seconds: dict[str, float]) -> Throughput:
        """The backbones' speeds relative to one another as `seconds` (the same work per backbone:
        each probe's extraction of every image) says, at the ranking's mean level. The ranking
        times a few batches per backbone, start-up included: on heritage it had lite2 22% slower
        than lite1, the probes' full extractions 5% (and lite2's fine-tune at 160 px was no slower)."""
        common = [b for b in self.seconds_per_image if seconds.get(b, 0) > 0]
        if len(common) < 2:
            return self
        level = sum(self.seconds_per_image[b] for b in common) / sum(seconds[b] for b in common)
        per_image = dict(self.seconds_per_image) | {b: seconds[b] * level for b in common}
        return replace(self, seconds_per_image=per_image)


@dataclass
class Decision:
    step: str
    action: str  # "run", "skip", "adopt", "reject", "reuse", "note"
    reason: str
    figure: str = ""

    def line(self) -> str:
        figure = f" ({self.figure})" if self.figure else ""
        return f"- **{self.step}**: {self.action}: {self.reason}{figure}"


@dataclass
class PlanLog:
    """The decisions in order, written to plan.md after each one (a kill loses none)."""

    path: Path
    title: str
    decisions: list[Decision] = field(default_factory=list)
    ablation: list[list[str]] = field(default_factory=list)  # [step, val accuracy, macro F1, note]
    echo: object = None  # callable(str) printing each decision as it is made

    def add(self, step: str, action: str, reason: str, figure: str = "") -> None:
        decision = Decision(step, action, reason, figure)
        self.decisions.append(decision)
        if self.echo is not None:
            self.echo(f"auto: {step}: {action}: {reason}" + (f" ({figure})" if figure else ""))
        self.write()

    def write(self, footer: str = "") -> None:
        lines = [f"# {self.title}", "", "## Decisions", ""] + [d.line() for d in self.decisions]
        if self.ablation:
            lines += ["", "## What each step contributed (validation split)", "",
                      "| step | val accuracy | val macro F1 | note |", "|---|---|---|---|"]
            lines += ["| " + " | ".join(row) + " |" for row in self.ablation]
        if footer:
            lines += ["", footer]
        write_text(self.path, "\n".join(lines) + "\n")


def seconds_text(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def parse_budget(text: str | float | int) -> float:
    """'20m', '90s', '1.5h' or a number of seconds -> seconds (at least 10)."""
    from transferlab.errors import TransferlabError

    units = {"s": 1, "m": 60, "min": 60, "h": 3600}
    raw = str(text).strip().lower()
    number, unit = raw, "s"
    for suffix in sorted(units, key=len, reverse=True):
        if raw.endswith(suffix):
            number, unit = raw[: -len(suffix)], suffix
            break
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise TransferlabError(f"--budget must be a duration like 20m, 90s or 1.5h, got {text!r}") from None
    if not 10 <= seconds <= 7 * 24 * 3600:
        # A bare number is seconds: '5' meant as minutes is the likely slip, so name the unit.
        hint = f" (a bare number is seconds: did you mean {raw}m?)" if unit == "s" and raw == number else ""
        raise TransferlabError(f"--budget must be between 10 s and 7 days, got {text!r}{hint}")
    return seconds
