"""Commands about data and backbones, before any training: backbones, doctor, rank, embed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from transferlab.cli.app import EXCLUDE_HELP, app, console, err_console
from transferlab.errors import TransferlabError
from transferlab.options import check_file, check_folder, check_int


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
    """Check an image folder: unreadable files, duplicates and near-duplicates, label conflicts, leaks, imbalance.

    Also counts per class and tiny images. Near-duplicates (resized or re-encoded copies) are found
    with perceptual hashes and listed for review; --strict fails on exact conflicts and leaks.
    """
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
def rank(
    data: Annotated[Path, typer.Argument(help="Image folder, one subfolder per class.")],
    backbones: Annotated[str, typer.Option(help="Comma-separated backbone names to score.")] = "tf_efficientnet_lite0,tf_efficientnet_lite1,tf_efficientnet_lite2",
    resolution: Annotated[Optional[str], typer.Option(help="Input size in px, 'native', or default: chosen from the images.")] = None,
    per_class: Annotated[Optional[int], typer.Option(help="Use at most N images per class.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split (the same as the probe's, so caches are shared).")] = 0,
    runs: Annotated[Optional[list[Path]], typer.Option(help="Probe runs to correlate with (default: runs/ on the same data).")] = None,
    cache_dir: Annotated[Optional[str], typer.Option(help="Feature cache folder.")] = None,
    engine: Annotated[Optional[str], typer.Option(
        help="What runs the backbones: torch, openvino or auto (default, or $TRANSFERLAB_ENGINE): OpenVINO where it "
             "is installed and compiles, else torch; 1.4-2.5x faster in bf16 on AVX512-BF16 CPUs, 1-3 s to export "
             "and compile each. Features are cached per engine: use the probe's engine to share its cache.")] = None,
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
                            seed=seed, progress=not quiet and not as_json, probe_runs=runs or (), engine=engine)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return
    typer.echo(result.table_text())
    if verbose:
        typer.echo(result.similarity_text())

@app.command()
def embed(
    source: Annotated[Path, typer.Argument(help="A run folder (probe; or fine-tuned: its penultimate features), "
                                                "or an image folder (then --out is needed).")],
    out: Annotated[Optional[Path], typer.Option(help="Output folder for the maps of an image folder (a run's "
                                                     "maps go to its plots/).")] = None,
    backbone: Annotated[str, typer.Option(help="Backbone for an image folder.")] = "tf_efficientnet_lite0",
    methods: Annotated[str, typer.Option(help="Comma-separated: pca, umap, tsne (UMAP compiles on first use).")] = "pca,umap,tsne",
    max_points: Annotated[int, typer.Option(help="Above this, a seeded random subset is mapped.")] = 5000,
    seed: Annotated[int, typer.Option(help="Seed for subsampling and the maps.")] = 0,
    three_d: Annotated[bool, typer.Option("--3d", help="Also write embed_3d.html, an interactive 3-D view that works "
                                                       "offline (needs the '3d' extra: pip install "
                                                       "'transferlab[3d]').")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
):
    """Maps of the features (PCA, UMAP, t-SNE) by class, prediction and error; per-class silhouette; outliers.

    A probe run's features are its pooled layers; a fine-tuned run's, its network's penultimate
    features (the head's input). --3d adds a self-contained interactive 3-D view beside the maps.
    """
    from transferlab.insight.embed import EmbedSettings, FolderEmbedSettings, embed_data, embed_run

    chosen = tuple(m.strip() for m in methods.split(",") if m.strip())
    common = {"methods": chosen, "seed": seed, "max_points": max_points, "progress": not quiet, "three_d": three_d}
    if (source / "run.json").is_file():
        if out is not None:
            raise TransferlabError(f"{source}: a run's maps go to its plots/ folder; --out is for an image folder")
        result = embed_run(source, EmbedSettings(**common))
    else:
        if out is None:
            raise TransferlabError(f"{source}: not a run folder; give --out for the maps of an image folder")
        from transferlab.runs import check_output_folder

        check_output_folder(out, "embed", lambda p: p.is_file() and p.name.startswith("embed")
                            and p.suffix in (".png", ".json", ".html"), reads=(source,))
        result = embed_data(source, out, FolderEmbedSettings(backbone=backbone, **common))
    typer.echo(result.summary_text())
