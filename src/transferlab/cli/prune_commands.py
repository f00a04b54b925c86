"""`transferlab prune`: smaller networks by cutting the backbone after block group k, one run per cut."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from transferlab.cli.app import EXCLUDE_HELP, app, console, err_console
from transferlab.errors import TransferlabError
from transferlab.options import check_file, check_folder, check_int

PRUNE_HELP = """Cut the backbone after each block group of --keep, put a new head on the cut and fine-tune it.

Each cut is an ordinary fine-tune run folder (predict, serve, export work on it) under
OUT/runs/keep-<group>/; then every network is measured on this CPU (parameters, multiply-adds,
median latency at batch 1 and 64) and set against its validation accuracy: OUT/prune.csv and
OUT/prune.html (table, curve, Pareto front marked).

Group names are the backbone's own ("stem", "blocks.0".."blocks.6", "neck" for EfficientNet;
"stem", "layer1".."layer4" for ResNet): --list-groups prints them with the parameters each
cut keeps. Cutting after the last group keeps the whole backbone (a reference point).

A recipe stage that trains a group the cut removed trains as many groups from the top of what
is left ("blocks.6,neck,head" becomes "blocks.3,blocks.4,head" on a cut after blocks.4).
With --from-run, every cut starts from that fine-tuned run's backbone and uses its data and
recipe unless DATA or --recipe say otherwise.

Re-run the same command to continue: finished cuts are kept, a killed one resumes; more
cuts in --keep add points to the same curve.
"""


@app.command(help=PRUNE_HELP)
def prune(
    data: Annotated[Path | None, typer.Argument(help="Image folder (default with --from-run: the run's).")] = None,
    keep: Annotated[str | None, typer.Option(help="Block groups to cut after, comma-separated, e.g. "
                                                     "blocks.3,blocks.4,blocks.5,blocks.6.")] = None,
    backbone: Annotated[str | None, typer.Option(help="Backbone name (default: the recipe's).")] = None,
    recipe: Annotated[Path | None, typer.Option(help="Fine-tune recipe for every cut (default: the built-in one, "
                                                        "or the --from-run run's).")] = None,
    from_run: Annotated[Path | None, typer.Option(help="A finished fine-tune run: start every cut from its "
                                                          "fine-tuned backbone.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs of every stage (overrides the recipe).")] = None,
    test: Annotated[Path | None, typer.Option(help="Separate test folder with the same class subfolders.")] = None,
    baseline: Annotated[Path | None, typer.Option(help="CSV with columns class,f1 to compare per class against.")] = None,
    baseline_partial: Annotated[bool, typer.Option(help="Accept a baseline that names only some of the classes.")] = False,
    exclude: Annotated[Path | None, typer.Option(help=EXCLUDE_HELP)] = None,
    out: Annotated[Path | None, typer.Option(help="Prune folder (default runs/prune-<data>-<backbone>).")] = None,
    list_groups: Annotated[bool, typer.Option("--list-groups", help="Print the backbone's groups and the "
                                              "parameters each cut keeps, then stop.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars (the one-line-per-cut log stays).")] = False,
):
    for path, what in ((recipe, "recipe"), (baseline, "baseline CSV"), (exclude, "exclude list")):
        check_file(path, what)
    check_folder(data)
    check_folder(test, "test folder")
    check_int("--epochs", epochs, 1)
    if from_run is not None:
        check_folder(from_run, "run folder")
    if list_groups:
        _print_groups(_recipe(recipe, backbone, epochs, None).backbone if from_run is None else
                      _from_run(from_run, data, backbone, progress=False).recipe.backbone)
        return
    from transferlab.pipelines.prune import PruneConfig, parse_keep, run_prune

    groups = parse_keep(keep)  # an empty --keep is one line before anything loads
    source = _from_run(from_run, data, backbone, not quiet) if from_run is not None else None
    if source is None and data is None:
        raise TransferlabError("give an image folder (or --from-run RUN)")
    chosen = _recipe(recipe, backbone or (source.recipe.backbone if source else None), epochs,
                     source.recipe if source and recipe is None else None)
    data_path = str(data) if data is not None else source.data

    def event(line: str) -> None:
        err_console.print(line, highlight=False, markup=False)

    config = PruneConfig(
        data=data_path, out=str(out or Path("runs") / f"prune-{Path(data_path).resolve().name}-{chosen.backbone}"),
        recipe=chosen, keep=groups, test=_given(test, source, "test"), baseline=_given(baseline, source, "baseline"),
        baseline_partial=baseline_partial or bool(source and source.baseline_partial),
        exclude=_given(exclude, source, "exclude"), from_run=str(from_run) if from_run else None,
        progress=not quiet, command=shlex.join(["transferlab", *sys.argv[1:]]), on_event=event)
    result = run_prune(config)
    _print(result)


def _recipe(path: Path | None, backbone: str | None, epochs: int | None, saved):
    import dataclasses

    from transferlab.finetune.recipe import load_recipe, recipe_from_saved

    if saved is not None:  # the --from-run run's recipe, with the overrides given now
        data = dataclasses.asdict(saved) | {k: v for k, v in (("backbone", backbone), ("epochs", epochs)) if v}
        return recipe_from_saved(data, "--from-run recipe")
    return load_recipe(path, {"backbone": backbone, "epochs": epochs})


def _from_run(run: Path, data: Path | None, backbone: str | None, progress: bool):
    from transferlab.pipelines.prune_source import config_from_run

    return config_from_run(run, str(data) if data else None, backbone, progress)


def _given(value: Path | None, source, name: str) -> str | None:
    if value is not None:
        return str(value)
    return getattr(source, name, None) if source is not None else None


def _print_groups(backbone: str) -> None:
    from rich.table import Table

    from transferlab.backbones.cut import cut_parameter_counts

    counts = cut_parameter_counts(backbone)
    table = Table(title=backbone, caption="parameters of the backbone left by each cut (classifier excluded)")
    table.add_column("cut after")
    table.add_column("backbone parameters", justify="right")
    for group, count in counts.items():
        table.add_row(group, f"{count:,}")
    console.print(table)


def _print(result) -> None:
    from rich.table import Table

    from transferlab.report.prune_report import latency_ms

    table = Table(title="prune (validation split)")
    for column in ("cut after", "parameters", "MACs (M)", "ms batch 1", "ms batch 64", "val acc", "Pareto"):
        table.add_column(column, justify="left" if column == "cut after" else "right")
    for row in result.rows:
        b1, b64 = latency_ms(row, 1), latency_ms(row, 64)
        table.add_row(row["cut"], f"{row['parameters']:,}", f"{row['multiply_adds'] / 1e6:,.1f}",
                      "-" if b1 is None else f"{b1:.2f}", "-" if b64 is None else f"{b64:.1f}",
                      "-" if row.get("val_accuracy") is None else f"{row['val_accuracy']:.4f}",
                      "front" if row.get("pareto") else "")
    console.print(table)
    for line in result.failed:
        err_console.print(f"failed: {line}", highlight=False, markup=False)
    if result.skipped:
        console.print(f"{result.skipped} cuts were finished earlier and kept", highlight=False)
    console.print(f"prune.csv: {result.out / 'prune.csv'}\nprune.json: {result.out / 'prune.json'}", highlight=False)
    console.print(f"report: {result.report}", highlight=False)
    if result.failed:
        raise typer.Exit(1)
