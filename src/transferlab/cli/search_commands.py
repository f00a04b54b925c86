"""`transferlab search`: Optuna's TPE over fine-tune recipes, with pruning, resume and shared studies."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from transferlab.cli.app import EXCLUDE_HELP, app, console, err_console
from transferlab.errors import TransferlabError
from transferlab.options import check_file, check_folder, check_int, check_training_options

# One line per paragraph (Typer wraps them); "\\[" keeps rich from reading a YAML list as markup.
_HELP_PARAGRAPHS = (
    "Search fine-tune recipes with Optuna (TPE, seeded) and prune hopeless trials early.",
    "SPACE.yaml maps recipe keys (or stages.K.FIELD) to distributions, e.g.",
    ("lr: {type: log, low: 1e-4, high: 1e-2}\n"
     "weight_decay: {type: float, low: 0, high: 0.1}\n"
     "resolution: {type: int, low: 128, high: 224, step: 32}\n"
     "augment: {type: categorical, choices: \\[none, light, classic]}\n"
     "stages.2.train: \\[\"blocks.6,neck,head\", \"blocks.5-6,neck,head\"]"),
    ("Every other setting comes from --recipe. Each trial is an ordinary fine-tune run folder under OUT/trials; "
     "pruned runs are marked \"pruned\". At the end OUT holds best_recipe.yaml (re-run it with `transferlab "
     "finetune DATA --recipe OUT/best_recipe.yaml`), trials.csv, search.json and search.html."),
    ("Resume: the study lives in OUT/search.db (SQLite) unless --storage says otherwise. Run the same command "
     "again to continue a killed search: finished trials are kept; the trial the kill interrupted is marked "
     "failed once its heartbeat is older than 3x --heartbeat, and retried with the same parameters."),
    ("Sharing: workers that give the same --storage and --study-name run distinct trials of one study until it "
     "has --trials complete or pruned trials: on several machines with --storage "
     "postgresql://USER:PASSWORD@HOST/DATABASE (each with its own --out), or as several processes on one "
     "machine with the same --out (they share its SQLite file). journal:FILE (Optuna's journal file) works "
     "too, but keeps no heartbeat: a killed worker's trial is not retried."),
)
SEARCH_HELP = "\n\n".join(_HELP_PARAGRAPHS)


# Units --timeout accepts, in seconds.
DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")


def parse_duration(text: str | None) -> float | None:
    """`90`, `90s`, `30m`, `2h` -> seconds."""
    if text is None:
        return None
    match = _DURATION.match(text.lower())
    if match is None or float(match.group(1)) <= 0:
        raise TransferlabError(f"--timeout must be a duration above 0 such as 90s, 30m or 2h, got {text!r}")
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


@app.command(help=SEARCH_HELP)
def search(
    data: Annotated[Path, typer.Argument(help="Image folder, one subfolder per class, or train/ val/ (test/) "
                                              "folders.")],
    space: Annotated[Path, typer.Option(help="YAML search space: recipe key -> distribution.")],
    trials: Annotated[int, typer.Option(help="Complete or pruned trials the study should reach.")] = 20,
    recipe: Annotated[Path | None, typer.Option(help="Base recipe the space's values are set in (default: "
                                                     "the recipe defaults).")] = None,
    timeout: Annotated[str | None, typer.Option(help="Start no trial after this long (90s, 30m, 2h); the "
                                                     "running one finishes and the results are written.")] = None,
    storage: Annotated[str | None, typer.Option(help="Study storage: a database URL (sqlite:///FILE, postgresql://"
                                                     "...) or journal:FILE; default OUT/search.db.")] = None,
    study_name: Annotated[str, typer.Option(help="Study name in the storage; workers sharing a study give the "
                                                 "same one.")] = "transferlab",
    out: Annotated[Path | None, typer.Option(help="Search folder (default runs/<data>-search).")] = None,
    pruner: Annotated[str, typer.Option(help="median, halving (successive halving) or none.")] = "median",
    seed: Annotated[int, typer.Option(help="Sampler seed, and every trial's recipe seed.")] = 0,
    heartbeat: Annotated[int, typer.Option(help="Seconds between a running trial's heartbeats; a trial silent "
                                                "for 3x as long is taken as killed and retried.")] = 20,
    test: Annotated[Path | None, typer.Option(help="Separate test folder with the same class subfolders.")] = None,
    baseline: Annotated[Path | None, typer.Option(help="CSV with columns class,f1 to compare per class "
                                                       "against.")] = None,
    exclude: Annotated[Path | None, typer.Option(help=EXCLUDE_HELP)] = None,
    workers: Annotated[int | None, typer.Option(help="Decoding worker processes (default suits the CPU "
                                                     "count).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars (the one line per trial stays).")] = False,
):
    # Cheap checks first: a typo should not cost the seconds it takes to import torch and Optuna.
    check_folder(data)
    check_folder(test, "test folder")
    for path, what in ((space, "search space"), (recipe, "recipe"), (baseline, "baseline CSV"),
                       (exclude, "exclude list")):
        check_file(path, what)
    check_int("--trials", trials, 1, 100_000)
    check_int("--heartbeat", heartbeat, 1, 3600)
    check_training_options(seed=seed, workers=workers)
    timeout_s = parse_duration(timeout)
    from transferlab.pipelines.search_space import (
        PRUNERS,
        check_same_search,
        check_search_folder,
        load_space,
    )
    from transferlab.pipelines.search_storage import storage_spec

    if pruner not in PRUNERS:
        raise TransferlabError(f"--pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    load_space(space)
    folder = out or Path("runs") / f"{Path(data).resolve().name}-search"
    check_same_search(check_search_folder(folder), folder, study_name, storage_spec(storage, folder).shown)

    from transferlab.features.extract import default_workers
    from transferlab.pipelines.search import SearchConfig, run_search

    config = SearchConfig(
        data=str(data), out=str(folder), space=str(space), recipe=str(recipe) if recipe else None, trials=trials,
        timeout_s=timeout_s, storage=storage, study_name=study_name, seed=seed, pruner=pruner,
        test=str(test) if test else None, baseline=str(baseline) if baseline else None,
        exclude=str(exclude) if exclude else None,
        workers=default_workers() if workers is None else workers, progress=not quiet, heartbeat_s=heartbeat,
        on_trial_end=_print_trial, on_note=lambda text: err_console.print(text, highlight=False, markup=False),
    )
    _print_result(run_search(config))


def _print_trial(row: dict) -> None:
    value = f" val acc {row['value']}" if row["value"] else ""
    epochs = f", {row['epochs']} epochs" if row["epochs"] else ""
    params = " ".join(f"{key}={label}" for key, label in row["params"].items())
    note = f" ({row['note']})" if row["note"] else ""
    err_console.print(f"trial {row['number']} {row['state']}{value}{epochs}: {params}{note}",
                      highlight=False, markup=False, soft_wrap=True)


def _print_result(result) -> None:
    counts = ", ".join(f"{n} {state}" for state, n in sorted(result.counts.items()))
    console.print(f"study {result.study_name!r} ({result.storage}): {counts}; stopped by {result.stopped_by}",
                  highlight=False, markup=False)
    if result.best is None:
        console.print("no complete trial yet: no best recipe", highlight=False, markup=False)
    else:
        best = result.best
        params = " ".join(f"{key}={label}" for key, label in best["params"].items())
        console.print(f"best: trial {best['number']}, val acc {best['value']:.4f}: {params}",
                      highlight=False, markup=False, soft_wrap=True)
        console.print(f"best recipe: {result.best_recipe}", highlight=False, markup=False)
    console.print(f"trials: {result.trials_csv}\nreport: {result.report}", highlight=False, markup=False)
