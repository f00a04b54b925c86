"""`transferlab auto`: the best model this CPU can find for a folder within a time budget."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from transferlab.cli.app import app, console, err_console
from transferlab.errors import TransferlabError
from transferlab.options import check_file, check_folder, check_int

AUTO_HELP = """Find the best classifier this machine can train on DATA within --budget (wall clock).

Measures this machine first (feature extraction of a subsample with each packaged backbone,
which also ranks them by LogME), then, each step only when its estimate fits what is left:
probes the backbones best-ranked first, fine-tunes the best one or two with the fast
cached-prefix recipe (the best one again at 1.25x the resolution, the second at whichever
did better), tries flip test-time augmentation, and ensembles the runs (greedy
selection on validation, scored out of fold) when that beats the best single run.

Every step is an ordinary run folder under OUT/runs/. OUT/plan.md logs each decision with
its reason and the figure behind it, and what each step contributed; OUT/result.json names
the run to use, relative to OUT (predict, serve and export accept it). Re-run the same command after a kill:
finished runs are kept, a killed fine-tune resumes, the time already spent counts.
"""


@app.command(help=AUTO_HELP)
def auto(
    data: Annotated[Path, typer.Argument(help="Image folder, one subfolder per class.")],
    budget: Annotated[str, typer.Option(help="Wall-clock budget: 20m, 90s, 1.5h.")] = "20m",
    test: Annotated[Path | None, typer.Option(help="Separate test folder with the same class subfolders.")] = None,
    baseline: Annotated[Path | None, typer.Option(help="CSV with columns class,f1 to compare per class against.")] = None,
    baseline_partial: Annotated[bool, typer.Option(help="Accept a baseline that names only some of the classes.")] = False,
    backbones: Annotated[str | None, typer.Option(help="Candidate backbones, comma-separated (default: the "
                                                       "packaged EfficientNet-Lite0/1/2, offline).")] = None,
    max_finetunes: Annotated[int, typer.Option(help="At most this many fine-tuned runs.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the split and every run.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Auto folder (default runs/auto-<data>).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars (the decision log stays).")] = False,
):
    check_folder(data)
    check_folder(test, "test folder")
    check_file(baseline, "baseline CSV")
    check_int("--max-finetunes", max_finetunes, 0, 10)
    from transferlab.pipelines.auto_plan import parse_budget

    seconds = parse_budget(budget)
    names = tuple(dict.fromkeys(b.strip() for b in backbones.split(",") if b.strip())) if backbones else None
    if backbones is not None and not names:
        raise TransferlabError("--backbones: give one or more backbone names")
    from transferlab.pipelines.auto import PACKAGED, AutoConfig, run_auto

    def event(line: str) -> None:
        err_console.print(line, highlight=False, markup=False)

    config = AutoConfig(data=str(data), out=str(out or Path("runs") / f"auto-{data.resolve().name}"),
                        budget_s=seconds, test=str(test) if test else None,
                        baseline=str(baseline) if baseline else None, baseline_partial=baseline_partial,
                        backbones=names or PACKAGED, max_finetunes=max_finetunes, seed=seed, progress=not quiet,
                        on_event=event)
    result = run_auto(config)
    console.print(f"[bold]model[/bold]: {result.chosen} (val accuracy {result.val_accuracy:.4f})", highlight=False)
    console.print(f"plan: {result.plan}", highlight=False)
