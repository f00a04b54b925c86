"""`transferlab ensemble`: several finished runs combined into one run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from transferlab.cli.app import app, console
from transferlab.cli.output import print_run_result
from transferlab.options import TTA_HELP, check_choice, check_file, check_folder, check_int, tta_mode

METHODS = ("mean", "weighted", "stack", "select")  # classifiers.ensemble_fit.METHODS, checked without its imports
ENGINES = ("torch", "openvino", "auto")  # features.extract.ENGINES, checked without torch

ENSEMBLE_HELP = """Combine probe and fine-tuned runs of the same classes into one model, itself a run folder.

--method mean averages the members' class probabilities; weighted fits one weight and one
temperature per member on the validation predictions (least log-loss); stack fits a logistic
regression on them (its regularisation by inner cross-validation); select picks members greedily,
with replacement, for the most correct validation images (Caruana's ensemble selection). A fitted method's
validation figures are cross-validated on the validation set (--folds), never measured on the
images it was fitted on; the report says so and sets the ensemble against every member on the
same images.

The members must have been validated on the same images (same data, seed and val fraction),
so that none trained on what the ensemble is scored on; runs whose class lists differ are
refused. Their models are copied into OUT/model/members/, so the ensemble folder stands alone:
predict, serve, explain (each member's maps) and export --format onnx (one graph holding every
member) work on it. Members may use different backbones and resolutions: the ensemble takes
the largest resolution and resizes inside its graph for the others.
"""


@app.command(help=ENSEMBLE_HELP)
def ensemble(
    runs: Annotated[list[Path], typer.Argument(help="Two or more finished probe or fine-tune run folders.")],
    method: Annotated[str, typer.Option(help="mean, weighted, stack or select.")] = "mean",
    folds: Annotated[int, typer.Option(help="Cross-validation folds on the validation set "
                                            "(weighted, stack, select).")] = 5,
    test: Annotated[Path | None, typer.Option(help="Separate test folder with the same class subfolders.")] = None,
    baseline: Annotated[Path | None, typer.Option(help="CSV with columns class,f1 to compare per class against.")] = None,
    baseline_partial: Annotated[bool, typer.Option(help="Accept a baseline that names only some of the classes.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the cross-validation folds and the stacker.")] = 0,
    tta: Annotated[str | None, typer.Option(help=TTA_HELP + " Applied to every member, in scoring and in the "
                                                  "ensemble's model; default: each member's own.")] = None,
    engine: Annotated[str | None, typer.Option(
        help="What scores the members on the validation images: torch, openvino or auto (default, or "
             "$TRANSFERLAB_ENGINE): OpenVINO in fp32 where it is installed and compiles a member, else torch. "
             "The same network at the same precision (probabilities agree to ~1e-4), 2.6-3x faster on elpv.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/ensemble-<method>-<first run>).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
):
    check_choice("--method", method, METHODS)
    check_int("--folds", folds, 2, 100)
    tta = None if tta is None else tta_mode(tta)
    if engine is not None:
        check_choice("--engine", engine, ENGINES)
    for run in runs:
        check_folder(run, "run folder")
    check_folder(test, "test folder")
    check_file(baseline, "baseline CSV")
    from transferlab.pipelines.ensemble import EnsembleConfig, run_ensemble

    config = EnsembleConfig(
        runs=[str(r) for r in runs], out=str(out or Path("runs") / f"ensemble-{method}-{runs[0].resolve().name}"),
        method=method, test=str(test) if test else None, baseline=str(baseline) if baseline else None,
        baseline_partial=baseline_partial, folds=folds, seed=seed, tta=tta, progress=not quiet,
        **({"engine": engine} if engine is not None else {}))
    result = run_ensemble(config)
    table = result.metrics["ensemble"]
    console.print(f"[bold]members[/bold]: {result.summary['members']}", highlight=False)
    console.print(f"[bold]combination[/bold]: {result.summary['combination']}", highlight=False)
    if "kept in the model" in result.summary:
        console.print(f"[bold]kept in the model[/bold]: {result.summary['kept in the model']}", highlight=False)
    console.print(f"[bold]scored with[/bold]: {result.summary['scored with']}", highlight=False)
    best = next(r for r in table["members"] if r["member"] == table["best_member"])
    console.print(f"best member {best['member']} val accuracy {best['val']['accuracy']:.4f}; ensemble "
                  f"{table['ensemble']['val']['accuracy']:.4f} ({table['gain_over_best_member'] * 100:+.2f} points)",
                  highlight=False)
    print_run_result(result, ())
