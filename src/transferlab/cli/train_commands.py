"""Commands that make runs: probe, finetune (and its LR range test), demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from transferlab.classifiers.names import CLASSIFIERS
from transferlab.cli.app import EXCLUDE_HELP, app, console
from transferlab.cli.output import print_finetune_result, print_lr_find, print_probe_result, print_stage
from transferlab.errors import TransferlabError
from transferlab.finetune.presets import AUGMENT_PRESETS
from transferlab.finetune.recipe import STAGE_PRESETS
from transferlab.options import (
    PRECISION_CHOICES,
    TTA_HELP,
    check_cache_dir,
    check_file,
    check_folder,
    check_int,
    check_training_options,
)
from transferlab.runs import check_out_folder


@app.command()
def probe(
    data: Annotated[Path, typer.Argument(help="Image folder, one subfolder per class (split into train/val), "
                                              "or train/ val/ [test/] folders (used as they are).")],
    test: Annotated[Optional[Path], typer.Option(help="Separate test folder with the same class subfolders.")] = None,
    backbone: Annotated[str, typer.Option(help="Backbone name (see `transferlab backbones`).")] = "tf_efficientnet_lite0",
    weights: Annotated[Optional[str], typer.Option(help="Weights file (safetensors or state dict; also a fine-tuned "
                                                        "network: a run's model/network.safetensors or a stage's "
                                                        "best.ckpt), or 'random'.")] = None,
    from_run: Annotated[Optional[Path], typer.Option(
        "--from-run", help="A fine-tuned run: features from its network (backbone, weights and resolution from the "
                           "run; leave --backbone and --weights out).")] = None,
    classifier: Annotated[str, typer.Option(help=f"One of {', '.join(CLASSIFIERS)}.")] = "logreg",
    grid: Annotated[bool, typer.Option(help="Small cross-validated grid over the classifier's main parameter.")] = False,
    ternary: Annotated[bool, typer.Option(help="Ternary-discretise features (full-network embedding).")] = False,
    layers: Annotated[str, typer.Option(help="Comma-separated: 'head' and/or 'stageK' (negative counts from the end).")] = "stage-2,head",
    pool: Annotated[str, typer.Option(help="avg, max or gem.")] = "avg",
    resolution: Annotated[Optional[int], typer.Option(help="Input size in px; default: chosen from the images.")] = None,
    precision: Annotated[str, typer.Option(help=f"{', '.join(PRECISION_CHOICES)}: auto is bf16 where the CPU has native bf16.")] = "auto",
    engine: Annotated[Optional[str], typer.Option(
        help="What runs the backbone: torch, openvino or auto (default, or $TRANSFERLAB_ENGINE): OpenVINO where it "
             "is installed and compiles the network, else torch. OpenVINO ran EfficientNet-Lite 1.4-2.5x faster "
             "than torch in bf16 on AVX512-BF16 CPUs, same probe accuracy, after an export and compile of 1-3 s; "
             "torch starts at once. Features are cached per engine.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 64,
    workers: Annotated[Optional[int], typer.Option(help="Decoding worker processes (default suits the CPU count).")] = None,
    val_fraction: Annotated[float, typer.Option(help="Fraction of each class held out for validation.")] = 0.2,
    per_class: Annotated[Optional[int], typer.Option(help="Use at most N images per class (small-data regime).")] = None,
    train_per_class: Annotated[Optional[int], typer.Option(help="Train on at most N images per class; validation "
                                                                "stays the same (a learning curve's points).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the split and the classifier.")] = 0,
    baseline: Annotated[Optional[Path], typer.Option(help="CSV with columns class,f1 to compare per class against.")] = None,
    baseline_partial: Annotated[bool, typer.Option(help="Accept a baseline that names only some of the classes "
                                                        "(compare those); otherwise its classes must match.")] = False,
    exclude: Annotated[Optional[Path], typer.Option(help=EXCLUDE_HELP)] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run folder (default runs/<data>-<backbone>-<classifier>).")] = None,
    cache_dir: Annotated[Optional[str], typer.Option(help="Feature cache folder ('' disables; default ~/.cache/transferlab).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
):
    """Pretrained (or, with --from-run, fine-tuned) features + a classical classifier: train, evaluate, compare
    with a baseline, report.

    Writes a run folder with metrics.json, predictions.csv, skipped.csv, plots, the model and report.html.
    """
    features_from = f"{from_run.resolve().name}-finetuned" if from_run else backbone
    run_dir = out or Path("runs") / f"{Path(data).resolve().name}-{features_from}-{classifier}"
    # Cheap checks first: a typo should not cost the seconds it takes to import torch.
    check_folder(data)
    check_folder(from_run, "fine-tuned run")
    check_folder(test, "test folder")
    check_file(baseline, "baseline CSV")
    check_file(exclude, "exclude list")
    check_training_options(seed=seed, resolution=resolution, batch_size=batch_size, workers=workers,
                           val_fraction=val_fraction, per_class=per_class, precision=precision)
    check_int("--train-per-class", train_per_class, 1)
    check_cache_dir(cache_dir, data)
    check_out_folder(run_dir)

    from transferlab.features.extract import default_workers
    from transferlab.pipelines.probe import ProbeConfig, run_probe

    config = ProbeConfig(
        data=str(data), out=str(run_dir), test=str(test) if test else None, backbone=backbone, weights=weights,
        from_run=str(from_run) if from_run else None,
        classifier=classifier, grid=grid, ternary=ternary, layers=layers.split(","), pool=pool,
        resolution=resolution, precision=precision, engine=engine, batch_size=batch_size,
        workers=default_workers() if workers is None else workers, val_fraction=val_fraction,
        per_class=per_class, train_per_class=train_per_class, seed=seed, baseline=str(baseline) if baseline else None,
        baseline_partial=baseline_partial, exclude=str(exclude) if exclude else None, cache_dir=cache_dir,
        progress=not quiet,
    )
    print_probe_result(run_probe(config))

@app.command()
def finetune(
    data: Annotated[Optional[Path], typer.Argument(help="Image folder, one subfolder per class, or train/ val/ [test/] "
                                                        "folders (not needed with --resume).")] = None,
    recipe: Annotated[Optional[Path], typer.Option(help="YAML recipe; the flags below override it.")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue a killed run from its last checkpoint.")] = None,
    test: Annotated[Optional[Path], typer.Option(help="Separate test folder with the same class subfolders.")] = None,
    backbone: Annotated[Optional[str], typer.Option(help="Backbone name (see `transferlab backbones`).")] = None,
    stages: Annotated[Optional[str], typer.Option(help=f"Stage preset: {', '.join(STAGE_PRESETS)}.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs of every stage (sets each stage's epochs).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate of the first stage (the rate --find-lr suggests); "
                                                     "later stages keep their ratio to it.")] = None,
    augment: Annotated[Optional[str], typer.Option(help=f"Augmentation preset: {', '.join(AUGMENT_PRESETS)} (a recipe may list its own).")] = None,
    resolution: Annotated[Optional[int], typer.Option(help="Input size in px; default: chosen from the images.")] = None,
    precision: Annotated[Optional[str], typer.Option(help=f"{', '.join(PRECISION_CHOICES)}.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Images per step.")] = None,
    per_class: Annotated[Optional[int], typer.Option(help="Use at most N images per class (small-data regime).")] = None,
    train_per_class: Annotated[Optional[int], typer.Option(help="Train on at most N images per class; validation "
                                                                "stays the same.")] = None,
    tta: Annotated[Optional[str], typer.Option(help=TTA_HELP)] = None,
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
                 "epochs": epochs, "lr": lr, "per_class": per_class, "train_per_class": train_per_class}
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
    check_int("--train-per-class", train_per_class, 1)
    check_int("--processes", processes, 1, 64)
    if lr is not None and not lr > 0:
        raise TransferlabError(f"--lr must be above 0, got {lr}")
    if out is not None and not find_lr:
        check_out_folder(out)

    from transferlab.finetune.recipe import load_recipe
    from transferlab.pipelines.finetune import FinetuneConfig, run_finetune

    resolved = load_recipe(recipe, overrides)
    kind = "lr-find" if find_lr else "finetune"
    run_dir = out or Path("runs") / f"{Path(data).resolve().name}-{resolved.backbone}-{kind}"
    config = FinetuneConfig(data=str(data), out=str(run_dir), recipe=resolved, test=str(test) if test else None,
                            baseline=str(baseline) if baseline else None, baseline_partial=baseline_partial,
                            exclude=str(exclude) if exclude else None, mlflow_uri=mlflow, progress=not quiet,
                            on_stage_end=print_stage)
    if find_lr:
        print_lr_find(config, 100 if lr_find_steps is None else lr_find_steps)
        return
    print_finetune_result(run_finetune(config))

def _finetune_resume(resume: Path, data: Path | None, backbone: str | None, find_lr: bool, recipe_options: list,
                     quiet: bool) -> None:
    if find_lr:
        raise TransferlabError("--find-lr tests a recipe before training; it cannot be combined with --resume")
    if any(v is not None for v in recipe_options):
        raise TransferlabError("--resume continues a run with its own recipe; drop the recipe options")
    check_folder(resume, "run folder")
    from transferlab.pipelines.finetune import resume_config, run_finetune

    config = resume_config(resume, data=str(data) if data else None, backbone=backbone, progress=not quiet)
    config.on_stage_end = print_stage
    print_finetune_result(run_finetune(config, resume=True))

@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Run folder.")] = Path("runs/demo"),
    data_dir: Annotated[Path, typer.Option(help="Where to lay out the demo image folder (links).")] = Path(".cache/elpv"),
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
):
    """Probe the solar-cell electroluminescence images that ship with the elpv-dataset package."""
    from transferlab.data.demo import prepare_elpv_folder
    from transferlab.pipelines.probe import ProbeConfig, run_probe

    check_out_folder(out, reads=(data_dir,))  # before the links are laid out
    folder = prepare_elpv_folder(data_dir)
    console.print(f"demo data: {folder} (elpv-dataset: solar cells, 4 defect-probability classes)", highlight=False)
    print_probe_result(run_probe(ProbeConfig(data=str(folder), out=str(out), progress=not quiet)))
