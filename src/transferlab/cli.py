"""`transferlab` command line: each command parses, calls one library function, prints."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from transferlab import __version__
from transferlab.errors import TransferlabError
from transferlab.options import (
    check_cache_dir,
    check_file,
    check_folder,
    check_int,
    check_training_options,
    expand_inputs,
)
from transferlab.runs import check_out_folder

EXCLUDE_HELP = "Exclude list from `doctor --write-exclude` (one path per line, relative to DATA; '#' comments)."

app = typer.Typer(
    help="Transfer learning for image classification on an ordinary CPU.\n\n"
    "Typical path: doctor (is the data sane?) -> probe (pretrained features + a classical "
    "classifier, minutes on a CPU) -> predict.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"transferlab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Transfer learning for image classification on an ordinary CPU."""


# Piped output (logs, CI) gets wide lines rather than 80-column tables squashed into ellipses.
console = Console() if sys.stdout.isatty() else Console(width=160)
err_console = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=160)


@app.command()
def backbones(as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False):
    """List registered backbones: weights source, parameters, feature dims, offline availability.

    Any other timm architecture name also works with --backbone when the hub is reachable,
    or offline with --weights FILE.
    """
    from transferlab.backbones import describe_backbones

    rows = describe_backbones()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="Backbones")
    for column in ("name", "source", "offline", "params (M)", "feature dim", "stage dims", "native px"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["name"], r["source"], "yes" if r["offline"] else "no", f"{r['params_m']:.2f}",
                      str(r["feature_dim"]), ",".join(map(str, r["stage_dims"])), str(r["native_size"]))
    console.print(table)


@app.command()
def doctor(
    data: Annotated[Path, typer.Argument(help="Image folder: one subfolder per class, or train/ val/ [test/] "
                                              "each with class subfolders.")],
    test: Annotated[Optional[Path], typer.Option(help="Separate test folder, checked for leaks.")] = None,
    min_side: Annotated[int, typer.Option(help="Images with a side below this many pixels are 'tiny'.")] = 32,
    imbalance: Annotated[float, typer.Option(help="Warn when largest/smallest class exceeds this.")] = 3.0,
    exclude: Annotated[Optional[Path], typer.Option(help=EXCLUDE_HELP)] = None,
    write_exclude: Annotated[Optional[Path], typer.Option(
        "--write-exclude", help="Write the files to leave out (unreadable, duplicate copies, label conflicts, "
                                "training copies of leaks) to this exclude list, for --exclude.")] = None,
    strict: Annotated[bool, typer.Option(help="Exit with status 1 on label conflicts or leaks (exact copies; "
                                              "near-duplicates are listed for review).")] = False,
    near_distance: Annotated[int, typer.Option(help="Largest perceptual-hash distance (bits of 64) for a "
                                                    "near-duplicate; -1 turns the search off.")] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = False,
):
    """Check an image folder: counts, unreadable files, duplicates and near-duplicates (perceptual hashes),
    label conflicts, leaks, tiny images, imbalance."""
    check_folder(data)
    check_folder(test, "test folder")
    check_file(exclude, "exclude list")
    check_int("--near-distance", near_distance, -1, 64)
    from transferlab.data.doctor import run_doctor
    from transferlab.data.names import printable

    report = run_doctor(data, test, min_side=min_side, imbalance_threshold=imbalance, progress=not as_json,
                        exclude=exclude, near_distance=None if near_distance < 0 else near_distance)
    if write_exclude is not None:
        report.write_exclude(write_exclude)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        for line in report.summary_lines():
            typer.echo(line)
        if write_exclude is not None:
            typer.echo(printable(f"exclude list written: {write_exclude} (use it with --exclude)"))
    problems = report.problems()
    if strict and problems:
        err_console.print("doctor --strict: " + "; ".join(problems), highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(1)


@app.command()
def probe(
    data: Annotated[Path, typer.Argument(help="Image folder, one subfolder per class (split into train/val), "
                                              "or train/ val/ [test/] folders (used as they are).")],
    test: Annotated[Optional[Path], typer.Option(help="Separate test folder with the same class subfolders.")] = None,
    backbone: Annotated[str, typer.Option(help="Backbone name (see `transferlab backbones`).")] = "tf_efficientnet_lite0",
    weights: Annotated[Optional[str], typer.Option(help="Weights file (safetensors or state dict), or 'random'.")] = None,
    classifier: Annotated[str, typer.Option(help="logreg, linear_svm, random_forest, knn or mlp.")] = "logreg",
    grid: Annotated[bool, typer.Option(help="Small cross-validated grid over the classifier's main parameter.")] = False,
    ternary: Annotated[bool, typer.Option(help="Ternary-discretise features (full-network embedding).")] = False,
    layers: Annotated[str, typer.Option(help="Comma-separated: 'head' and/or 'stageK' (negative counts from the end).")] = "stage-2,head",
    pool: Annotated[str, typer.Option(help="avg, max or gem.")] = "avg",
    resolution: Annotated[Optional[int], typer.Option(help="Input size in px; default: chosen from the images.")] = None,
    precision: Annotated[str, typer.Option(help="auto (bf16 where the CPU has native bf16), fp32 or bf16.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    workers: Annotated[Optional[int], typer.Option(help="Decoding worker processes (default suits the CPU count).")] = None,
    val_fraction: Annotated[float, typer.Option(help="Fraction of each class held out for validation.")] = 0.2,
    per_class: Annotated[Optional[int], typer.Option(help="Use at most N images per class (small-data regime).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the split and the classifier.")] = 0,
    baseline: Annotated[Optional[Path], typer.Option(help="CSV with columns class,f1 to compare per class against.")] = None,
    baseline_partial: Annotated[bool, typer.Option(help="Accept a baseline that names only some of the classes "
                                                        "(compare those); otherwise its classes must match.")] = False,
    exclude: Annotated[Optional[Path], typer.Option(help=EXCLUDE_HELP)] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default runs/<data>-<backbone>-<classifier>).")] = None,
    cache_dir: Annotated[Optional[str], typer.Option(help="Feature cache folder ('' disables; default ~/.cache/transferlab).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
):
    """Pretrained features + a classical classifier: train, evaluate, compare with a baseline, report.

    Writes a run folder with metrics.json, predictions.csv, skipped.csv, plots, the model and report.html.
    """
    run_dir = out or Path("runs") / f"{Path(data).resolve().name}-{backbone}-{classifier}"
    # Cheap checks first: a typo should not cost the seconds it takes to import torch.
    check_folder(data)
    check_folder(test, "test folder")
    check_file(baseline, "baseline CSV")
    check_file(exclude, "exclude list")
    check_training_options(seed=seed, resolution=resolution, batch_size=batch_size, workers=workers,
                           val_fraction=val_fraction, per_class=per_class, precision=precision)
    check_cache_dir(cache_dir)
    check_out_folder(run_dir)

    from transferlab.features.extract import default_workers
    from transferlab.probe import ProbeConfig, run_probe

    config = ProbeConfig(
        data=str(data), out=str(run_dir), test=str(test) if test else None, backbone=backbone, weights=weights,
        classifier=classifier, grid=grid, ternary=ternary, layers=layers.split(","), pool=pool,
        resolution=resolution, precision=precision, batch_size=batch_size,
        workers=default_workers() if workers is None else workers, val_fraction=val_fraction,
        per_class=per_class, seed=seed, baseline=str(baseline) if baseline else None,
        baseline_partial=baseline_partial, exclude=str(exclude) if exclude else None, cache_dir=cache_dir,
        progress=not quiet,
    )
    _print_probe_result(run_probe(config))


@app.command()
def finetune(
    data: Annotated[Optional[Path], typer.Argument(help="Image folder, one subfolder per class, or train/ val/ [test/] "
                                                        "folders (not needed with --resume).")] = None,
    recipe: Annotated[Optional[Path], typer.Option(help="YAML recipe; the flags below override it.")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue a killed run from its last checkpoint.")] = None,
    test: Annotated[Optional[Path], typer.Option(help="Separate test folder with the same class subfolders.")] = None,
    backbone: Annotated[Optional[str], typer.Option(help="Backbone name (see `transferlab backbones`).")] = None,
    stages: Annotated[Optional[str], typer.Option(help="Stage preset: head-only, fine_tune, three-step, from-block:K, gradual:N.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs of every stage (sets each stage's epochs).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate of the first stage (the rate --find-lr suggests); "
                                                     "later stages keep their ratio to it.")] = None,
    augment: Annotated[Optional[str], typer.Option(help="none, light, classic, randaugment, trivialaugment.")] = None,
    resolution: Annotated[Optional[int], typer.Option(help="Input size in px; default: chosen from the images.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto, fp32 or bf16.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step.")] = None,
    per_class: Annotated[Optional[int], typer.Option(help="Use at most N images per class (small-data regime).")] = None,
    tta: Annotated[Optional[bool], typer.Option(help="Average predictions with the horizontally flipped image.")] = None,
    processes: Annotated[Optional[int], typer.Option(help="Train with N processes (Lightning DDP, gloo on CPU).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for split, augmentation and initialisation.")] = None,
    baseline: Annotated[Optional[Path], typer.Option(help="CSV with columns class,f1 to compare per class against.")] = None,
    baseline_partial: Annotated[bool, typer.Option(help="Accept a baseline that names only some of the classes.")] = False,
    exclude: Annotated[Optional[Path], typer.Option(help=EXCLUDE_HELP)] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default runs/<data>-<backbone>-finetune).")] = None,
    mlflow: Annotated[Optional[str], typer.Option(help="Also log to this MLflow tracking URI.")] = None,
    find_lr: Annotated[bool, typer.Option("--find-lr", help="Only run a learning-rate range test on the first stage "
                                          "(Lightning's LR finder): print the suggested lr, write lr_find.json and "
                                          "plots/lr_find.png under --out, train nothing.")] = False,
    lr_find_steps: Annotated[Optional[int], typer.Option(help="Batches in the --find-lr range test, from lr 1e-6 "
                                                              "to 1 (default 100).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
):
    """Fine-tune a backbone with a configurable head and staged unfreezing; same report as the probe.

    The resolved recipe is saved as the run's config.yaml and can be re-run with --recipe. Progress
    goes to stderr (bars only on a terminal); each stage's line is printed as the stage ends.
    """
    overrides = {"backbone": backbone, "stages": stages, "augment": augment, "resolution": resolution,
                 "precision": precision, "batch_size": batch_size, "tta": tta, "processes": processes, "seed": seed,
                 "epochs": epochs, "lr": lr, "per_class": per_class}
    if lr_find_steps is not None and not find_lr:
        raise TransferlabError("--lr-find-steps goes with --find-lr")
    if resume is not None:
        _finetune_resume(resume, data, backbone, find_lr, [recipe] + [v for k, v in overrides.items()
                                                                    if k != "backbone"], quiet)
        return
    if data is None:
        raise TransferlabError("give an image folder (or --resume RUN)")
    for path, what in ((recipe, "recipe"), (baseline, "baseline CSV"), (exclude, "exclude list")):
        check_file(path, what)
    check_folder(data)
    check_folder(test, "test folder")
    check_training_options(seed=seed, resolution=resolution, batch_size=batch_size, per_class=per_class,
                           precision=precision)
    check_int("--epochs", epochs, 1)
    check_int("--processes", processes, 1, 64)
    if lr is not None and not lr > 0:
        raise TransferlabError(f"--lr must be above 0, got {lr}")
    if out is not None and not find_lr:
        check_out_folder(out)

    from transferlab.finetune.recipe import load_recipe
    from transferlab.finetune.train import FinetuneConfig, run_finetune

    resolved = load_recipe(recipe, overrides)
    kind = "lr-find" if find_lr else "finetune"
    run_dir = out or Path("runs") / f"{Path(data).resolve().name}-{resolved.backbone}-{kind}"
    config = FinetuneConfig(data=str(data), out=str(run_dir), recipe=resolved, test=str(test) if test else None,
                            baseline=str(baseline) if baseline else None, baseline_partial=baseline_partial,
                            exclude=str(exclude) if exclude else None, mlflow_uri=mlflow, progress=not quiet,
                            on_stage_end=_print_stage)
    if find_lr:
        _print_lr_find(config, 100 if lr_find_steps is None else lr_find_steps)
        return
    _print_finetune_result(run_finetune(config))


def _finetune_resume(resume: Path, data: Path | None, backbone: str | None, find_lr: bool, recipe_options: list,
                     quiet: bool) -> None:
    if find_lr:
        raise TransferlabError("--find-lr tests a recipe before training; it cannot be combined with --resume")
    if any(v is not None for v in recipe_options):
        raise TransferlabError("--resume continues a run with its own recipe; drop the recipe options")
    check_folder(resume, "run folder")
    from transferlab.finetune.train import resume_config, run_finetune

    config = resume_config(resume, data=str(data) if data else None, backbone=backbone, progress=not quiet)
    config.on_stage_end = _print_stage
    _print_finetune_result(run_finetune(config, resume=True))


def _print_stage(stage: dict) -> None:
    console.print(f"stage {stage['index']} ({stage['train']}): {stage['epochs_run']} epochs, "
                  f"best val acc {stage['best_val_acc']:.4f}, {stage['seconds']:.0f}s", highlight=False)
    console.file.flush()  # stdout is block-buffered in a pipe: show the line when the stage ends


def _print_lr_find(config, steps: int) -> None:
    from transferlab.finetune.lr_find import find_learning_rate

    result = find_learning_rate(config, steps=steps)
    if result.suggestion is None:
        console.print(f"no suggestion: the loss never fell steadily over {len(result.lrs)} steps; "
                      "look at the plot, or raise --lr-find-steps", highlight=False)
    else:
        console.print(f"suggested lr for the first stage ({result.stage}): [bold]{result.suggestion:.2g}[/bold] "
                      f"(the recipe has {result.lr_field}: {result.recipe_lr:g}); "
                      f"set it as the first stage's {result.lr_field} in the recipe", highlight=False)
    console.print(f"curve: {result.plot}\nrecord: {result.record}", highlight=False)


def _print_finetune_result(result) -> None:  # stage lines were printed as each stage ended
    _print_result(result, ("backbone", "method", "best stage", "resolution", "precision", "images"))


def _print_probe_result(result) -> None:
    _print_result(result, ("backbone", "classifier", "layers", "resolution", "precision", "images", "features"))


def _print_result(result, keys: tuple[str, ...]) -> None:
    summary, metrics = result.summary, result.metrics
    for key in keys:
        console.print(f"[bold]{key}[/bold]: {summary[key]}", highlight=False)
    for split in ("val", "test"):
        if split not in metrics:
            continue
        m = metrics[split]
        base = m.get("baseline", {}).get("per_class", {})
        table = Table(title=f"{split}: accuracy {m['accuracy']:.4f}, macro F1 {m['macro_f1']:.4f}, "
                            f"weighted F1 {m['weighted_f1']:.4f}")
        for column in ("class", "precision", "recall", "f1", "support") + (("baseline f1", "delta") if base else ()):
            table.add_column(column, justify="left" if column == "class" else "right")
        for name, row in m["per_class"].items():
            cells = [name, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", str(row["support"])]
            if base:
                b = base.get(name)
                cells += [f"{b['baseline']:.3f}", f"[{'green' if b['ours'] > b['baseline'] else 'red'}]{b['delta']:+.3f}[/]"] if b else ["-", "-"]
            table.add_row(*cells)
        console.print(table)
    if "baseline" in metrics:
        b = metrics["baseline"]
        console.print(f"[bold]beats {b['beats']} of {b['of']} classes[/bold] against the baseline ({b['split']})")
    for warning in result.warnings:
        err_console.print(f"warning: {warning}", highlight=False, markup=False)
    timings = metrics["timings"]
    console.print(f"time: {timings['total']:.1f}s ({', '.join(f'{k} {v:.1f}s' for k, v in timings.items() if k != 'total')})")
    console.print(f"report: {result.run_dir / 'report.html'}", highlight=False)


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="A finished run folder.")],
    images: Annotated[list[Path], typer.Argument(help="Image files, or folders (searched recursively).")],
    top_k: Annotated[int, typer.Option(help="How many classes to show per image.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    csv_out: Annotated[Optional[Path], typer.Option("--csv", help="Also write every prediction to this CSV file "
                                                                  "(path, predicted, probability, error, top-k).")] = None,
):
    """Classify images (files, or folders searched recursively) with a trained run.

    Prints the top-k classes with probabilities; --csv also writes them to a file. Exit code 1
    when some image could not be read (each is listed), 2 when a path does not exist.
    """
    check_int("--top-k", top_k, 1)
    paths = expand_inputs(images)
    from transferlab.predict import load_predictor, predictions_csv

    predictor = load_predictor(run)
    results = predictor.predict_paths(paths, top_k=top_k)
    failed = 0
    for result in results:
        if result.error:
            failed += 1
            err_console.print(f"error: {result.error}", highlight=False, markup=False)
        elif as_json:
            print(json.dumps({"path": str(result.path), "top": [{"class": c, "p": round(p, 5)} for c, p in result.top]}))
        else:
            ranked = "  ".join(f"{c} {p:.3f}" for c, p in result.top)
            console.print(f"{result.path}: {ranked}", highlight=False, markup=False)
    if csv_out is not None:
        from transferlab.atomic import write_text

        write_text(csv_out, _csv_text(["path", "predicted", "probability", "error", "top"], predictions_csv(results)))
        err_console.print(f"{len(results)} predictions written to {csv_out}", highlight=False, markup=False)
    if failed:
        raise typer.Exit(1)


def _csv_text(header: list[str], rows: list[list]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


@app.command()
def explain(
    run: Annotated[Path, typer.Argument(help="A finished run folder (logistic-regression probe).")],
    images: Annotated[list[Path], typer.Argument(help="Image files to explain.")],
    method: Annotated[list[str], typer.Option(help="gradcam, gradcam++ or layercam; repeat for several.")] = ["gradcam", "gradcam++"],
    out: Annotated[Optional[Path], typer.Option(help="Folder for the overlays (default RUN/explain).")] = None,
):
    """Class-activation maps: where the model looks for its predicted class; overlays saved as PNG."""
    from transferlab.explain.cam import CAM_METHODS
    from transferlab.explain.run import RunExplainer

    unknown = [m for m in method if m not in CAM_METHODS]
    if unknown:
        raise TransferlabError(f"unknown CAM method '{unknown[0]}': choose from {', '.join(CAM_METHODS)}")
    out_dir = out or run / "explain"
    failed = 0
    for result in RunExplainer(run).explain_paths(images, out_dir, tuple(method)):
        if result.error:
            failed += 1
            err_console.print(f"error: {result.error}", highlight=False, markup=False)
            continue
        files = ", ".join(str(p) for p in result.overlays.values())
        console.print(f"{result.path}: {result.predicted} {result.probability:.3f} -> {files}", highlight=False, markup=False)
    if failed:
        raise typer.Exit(1)


@app.command()
def rank(
    data: Annotated[Path, typer.Argument(help="Image folder, one subfolder per class.")],
    backbones: Annotated[str, typer.Option(help="Comma-separated backbone names to score.")] = "tf_efficientnet_lite0,tf_efficientnet_lite1,tf_efficientnet_lite2",
    resolution: Annotated[Optional[str], typer.Option(help="Input size in px, 'native', or default: chosen from the images.")] = None,
    per_class: Annotated[Optional[int], typer.Option(help="Use at most N images per class.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split (the same as the probe's, so caches are shared).")] = 0,
    runs: Annotated[Optional[list[Path]], typer.Option(help="Probe runs to correlate with (default: runs/ on the same data).")] = None,
    cache_dir: Annotated[Optional[str], typer.Option(help="Feature cache folder.")] = None,
    verbose: Annotated[bool, typer.Option(help="Also print how each class maps onto ImageNet labels.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
):
    """Score backbones before training: LogME, LEEP and ImageNet task similarity on cached features.

    Where probe runs on the same data exist, prints the rank correlation of each estimate with their accuracy.
    """
    from transferlab.insight.transferability import rank_backbones

    chosen_resolution: int | str | None = resolution
    if resolution not in (None, "native"):
        try:
            chosen_resolution = int(resolution)
        except ValueError:
            raise TransferlabError(f"--resolution must be a number of pixels or 'native', got '{resolution}'") from None
    names = [n.strip() for n in backbones.split(",") if n.strip()]
    result = rank_backbones(data, names, resolution=chosen_resolution, cache_dir=cache_dir, per_class=per_class,
                            seed=seed, progress=not quiet and not as_json, probe_runs=runs or ())
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return
    typer.echo(result.table_text())
    if verbose:
        typer.echo(result.similarity_text())


@app.command()
def embed(
    source: Annotated[Path, typer.Argument(help="A run folder, or an image folder (then --out is needed).")],
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: the run's plots/).")] = None,
    backbone: Annotated[str, typer.Option(help="Backbone for an image folder.")] = "tf_efficientnet_lite0",
    methods: Annotated[str, typer.Option(help="Comma-separated: pca, umap, tsne (UMAP compiles on first use).")] = "pca,umap,tsne",
    max_points: Annotated[int, typer.Option(help="Above this, a seeded random subset is mapped.")] = 5000,
    seed: Annotated[int, typer.Option(help="Seed for subsampling and the maps.")] = 0,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
):
    """Maps of the features (PCA, UMAP, t-SNE) by class, prediction and error; per-class silhouette; outliers."""
    from transferlab.insight.embed import embed_data, embed_run

    chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
    if (source / "run.json").is_file():
        result = embed_run(source, chosen, seed, max_points, progress=not quiet)
    else:
        if out is None:
            raise TransferlabError(f"{source}: not a run folder; give --out for the maps of an image folder")
        result = embed_data(source, backbone, out_dir=out, methods=chosen, seed=seed, max_points=max_points,
                            progress=not quiet)
    typer.echo(result.summary_text())


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run folders to put side by side.")],
    html: Annotated[Path, typer.Option(help="Where to write the sortable HTML table.")] = Path("compare.html"),
):
    """One results table across runs: backbone, method, resolution, time, accuracy, macro F1, per-class F1."""
    from transferlab.insight.compare import compare_runs

    comparison = compare_runs(runs)
    for warning in comparison.warnings:
        err_console.print(f"warning: {warning}", highlight=False, markup=False)
    typer.echo(comparison.table_text())
    typer.echo(f"html: {comparison.write_html(html)}")


@app.command()
def serve(
    run: Annotated[Path, typer.Argument(help="A finished run folder (probe or fine-tuned).")],
    host: Annotated[str, typer.Option(help="Address to bind; 127.0.0.1 keeps it on this machine.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Server processes (each loads the model once).")] = 1,
    engine: Annotated[str, typer.Option(help="torch, or onnx (needs `transferlab export RUN --format onnx`).")] = "torch",
    max_upload_mb: Annotated[float, typer.Option(help="Largest accepted upload, in MB.")] = 10.0,
    top_k: Annotated[int, typer.Option(help="Classes returned per image.")] = 3,
    allowed_host: Annotated[Optional[list[str]], typer.Option(
        "--allowed-host", help="Answer only requests with this Host header (repeatable; *.example.org works). "
                               "Default: any host; see docs/serving.md for the reverse-proxy setup.")] = None,
    max_concurrent_batches: Annotated[int, typer.Option(help="/predict/batch requests processed at once; more get "
                                                             "503 + Retry-After.")] = 2,
    decode_memory_mb: Annotated[float, typer.Option(help="Memory for decoding uploads at once, in MB; an image "
                                                         "needing more gets 413.")] = 1024.0,
):
    """Serve a run over HTTP: an upload page at /, POST /predict, /predict/batch, /model, /health, /docs."""
    check_int("--port", port, 1, 65535)
    check_int("--workers", workers, 1, 64)
    check_int("--top-k", top_k, 1)
    if not 0 < max_upload_mb <= 1024:
        raise TransferlabError(f"--max-upload-mb must be above 0 and at most 1024, got {max_upload_mb}")
    check_int("--max-concurrent-batches", max_concurrent_batches, 1, 1024)
    if not 16 <= decode_memory_mb <= 1024 * 1024:
        raise TransferlabError(f"--decode-memory-mb must be between 16 and 1048576, got {decode_memory_mb}")
    from transferlab.serve import serve as serve_run
    from transferlab.serve.engines import check_engine

    check_engine(run, engine)
    console.print(f"serving {run} ({engine}) on http://{host}:{port}/", highlight=False)
    serve_run(run, host=host, port=port, workers=workers, engine=engine,
              max_upload_bytes=int(max_upload_mb * 1024 * 1024), top_k=top_k,
              allowed_hosts=allowed_host or None, max_concurrent_batches=max_concurrent_batches,
              decode_memory_bytes=int(decode_memory_mb * 1024 * 1024))


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="A finished run folder (probe with a logistic-regression head, or fine-tuned).")],
    format: Annotated[str, typer.Option("--format", help="onnx or torchscript.")] = "onnx",
    out: Annotated[Optional[Path], typer.Option(help="Output file (default RUN/model/model.onnx or model.pt).")] = None,
    tolerance: Annotated[float, typer.Option(help="Largest allowed difference from PyTorch's probabilities.")] = 1e-4,
):
    """Export the whole model (normalised image -> probabilities), checked against PyTorch before it is kept."""
    from transferlab.export import export_run

    path = export_run(run, format, out, tolerance)
    record = json.loads((Path(run) / "model" / "export.json").read_text(encoding="utf-8")).get(format, {})
    console.print(f"{format}: {path} (parity: max abs difference {record.get('max_abs_diff', float('nan')):.2g} "
                  f"<= {tolerance:g})", highlight=False)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Run folder.")] = Path("runs/demo"),
    data_dir: Annotated[Path, typer.Option(help="Where to lay out the demo image folder (links).")] = Path(".cache/elpv"),
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
):
    """Probe the solar-cell electroluminescence images that ship with the elpv-dataset package."""
    from transferlab.demo import prepare_elpv_folder
    from transferlab.probe import ProbeConfig, run_probe

    folder = prepare_elpv_folder(data_dir)
    console.print(f"demo data: {folder} (elpv-dataset: solar cells, 4 defect-probability classes)", highlight=False)
    _print_probe_result(run_probe(ProbeConfig(data=str(folder), out=str(out), progress=not quiet)))


def main() -> None:
    # A file name that is not UTF-8 must print (as an escape), not end the command.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        app()
    except TransferlabError as exc:
        err_console.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)
    except MemoryError:
        err_console.print("error: out of memory (try a smaller --batch-size or --resolution)", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted", highlight=False)
        sys.exit(130)
    except SystemExit as exc:
        if exc.code == 130:  # Typer turns Ctrl-C into a silent exit 130: say what happened
            err_console.print("interrupted", highlight=False)
        raise


if __name__ == "__main__":
    main()
