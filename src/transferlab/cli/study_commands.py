"""`transferlab study`: many runs that differ in one setting at a time, and their comparison."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from transferlab.cli.app import EXCLUDE_HELP, app, console, err_console
from transferlab.errors import TransferlabError
from transferlab.options import check_cache_dir, check_file, check_folder

STUDY_HELP = "\n\n".join([  # one line per paragraph: rich re-wraps them; \[ keeps brackets literal
    "Run a study: one ordinary run per variant and seed, then a table, plots and paired differences.",
    "TARGET is an image folder (then give --vary, and --recipe for fine-tune studies) or a YAML study spec (see studies/ for the source studies' specs; DATA then names the image folder).",
    "KEY is a probe setting (backbone, layers, pool, classifier, resolution, ternary, per_class, train_per_class, ...) or a recipe key (augment, head, label_smoothing, mixup, weight_decay, stages, epochs, lr, stages.2.lr, ...). Values are YAML: --vary augment=none,light,classic; --vary train_per_class=25,50,all (a learning curve on a fixed validation set); --vary 'layers=\\[head],\\[stage-2,head]'. Several --vary change one key at a time around the reference (the recipe's own value, else the first listed); --factorial crosses them.",
    "Re-run the same command to continue a killed study: finished runs are kept, a killed fine-tune run resumes from its last checkpoint.",
])


@app.command(help=STUDY_HELP)
def study(
    target: Annotated[Path, typer.Argument(help="Image folder, or a YAML study spec.")],
    data: Annotated[Optional[Path], typer.Argument(help="Image folder, when TARGET is a spec "
                                                        "(default: the spec's data).")] = None,
    vary: Annotated[Optional[list[str]], typer.Option(help="KEY=V1,V2,... (repeat for more keys).")] = None,
    recipe: Annotated[Optional[Path], typer.Option(help="Fine-tune recipe the variants start from.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="KEY=VALUE set in every variant, e.g. "
                                                      "--set backbone=tf_efficientnet_lite0 (repeatable; wins "
                                                      "over the spec's fixed settings).")] = None,
    mode: Annotated[Optional[str], typer.Option(help="probe or finetune (default: finetune with a recipe or "
                                                     "a recipe key, probe otherwise).")] = None,
    seeds: Annotated[Optional[str], typer.Option(help="Seeds, comma-separated (default 0, or the spec's): each "
                                                      "variant runs once per seed (equal seeds share the split, "
                                                      "so differences are paired).")] = None,
    factorial: Annotated[bool, typer.Option(help="Every combination of the --vary values, "
                                                 "instead of one key at a time.")] = False,
    test: Annotated[Optional[Path], typer.Option(help="Separate test folder with the same class subfolders.")] = None,
    baseline: Annotated[Optional[Path], typer.Option(help="CSV with columns class,f1 to compare per class against.")] = None,
    baseline_partial: Annotated[bool, typer.Option(help="Accept a baseline that names only some of the classes.")] = False,
    exclude: Annotated[Optional[Path], typer.Option(help=EXCLUDE_HELP)] = None,
    out: Annotated[Optional[Path], typer.Option(help="Study folder (default runs/study-<data>-<keys>).")] = None,
    cache_dir: Annotated[Optional[str], typer.Option(help="Probe feature cache ('' disables).")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars (the one-line-per-run log stays).")] = False,
):
    spec = _spec(target, data, vary, recipe, mode, seeds, factorial, test, baseline, set_ or [])
    check_file(exclude, "exclude list")
    check_cache_dir(cache_dir, spec.data)
    run_dir = out or Path("runs") / f"study-{Path(spec.data).resolve().name}-" \
                                    f"{'-'.join(f.key for f in spec.factors)}"

    from transferlab.pipelines.study import StudyConfig, run_study

    def event(line: str) -> None:
        err_console.print(line, highlight=False, markup=False)

    config = StudyConfig(spec=spec, out=str(run_dir), baseline_partial=baseline_partial,
                         exclude=str(exclude) if exclude else None, cache_dir=cache_dir, progress=not quiet,
                         command=shlex.join(["transferlab", *sys.argv[1:]]), on_event=event)
    result = run_study(config)
    _print(result)


def _spec(target: Path, data: Path | None, vary: list[str] | None, recipe: Path | None, mode: str | None,
          seeds: str | None, factorial: bool, test: Path | None, baseline: Path | None, sets: list[str]):
    from transferlab.pipelines.settings import infer_mode, parse_vary
    from transferlab.pipelines.study_spec import StudySpec, check_spec, factor_from_values, load_study_spec, parse_seeds

    fixed = {}
    for text in sets:
        key, values = parse_vary(text)
        if len(values) != 1:
            raise TransferlabError(f"--set {key}: give one value (--vary varies it), got {len(values)}")
        fixed[key] = values[0]
    if target.is_file():
        if vary or recipe or mode:
            raise TransferlabError(f"{target}: a spec names its own settings; drop --vary/--recipe/--mode "
                                   "(or edit the spec)")
        if data is not None:
            check_folder(data)
        spec = load_study_spec(target, str(data) if data else None)
        spec.seeds = parse_seeds(seeds) if seeds is not None else spec.seeds
        spec.factorial = spec.factorial or factorial
        spec.test = str(test) if test else spec.test
        spec.baseline = str(baseline) if baseline else spec.baseline
        spec.fixed.update(fixed)
        check_spec(spec, str(target))
        return spec
    check_folder(target)
    if data is not None:
        raise TransferlabError(f"{data}: a second folder is only for spec files (transferlab study SPEC.yaml DATA)")
    if not vary:
        raise TransferlabError("give at least one --vary KEY=V1,V2 (or a study spec file)")
    check_file(recipe, "recipe")
    check_folder(test, "test folder")
    check_file(baseline, "baseline CSV")
    parsed = [parse_vary(text) for text in vary]
    factors = [factor_from_values(key, values, "--vary") for key, values in parsed]
    spec = StudySpec(data=str(target), factors=factors, recipe=str(recipe) if recipe else None,
                     seeds=parse_seeds(seeds or "0"), factorial=factorial, fixed=fixed, test=str(test) if test else None,
                     baseline=str(baseline) if baseline else None)
    spec.mode = mode or infer_mode([f.key for f in factors], recipe is not None)
    check_spec(spec, "study")
    return spec


def _print(result) -> None:
    from rich.table import Table
    from rich.text import Text  # labels such as [head] are text, not rich markup

    table = Table(title="study (validation split)")
    for column in ("variant", "seeds", "accuracy", "macro F1", "vs reference (points)", "verdict"):
        table.add_column(column, justify="left" if column in ("variant", "verdict") else "right")
    for row in (result.summary or {}).get("variants", []):
        paired = row.get("paired") or {}
        diff = (paired.get("accuracy_diff") or {}).get("mean")
        table.add_row(Text(row["variant"] + (" (reference)" if row.get("reference") and row["variant"] != "reference" else "")), str(row["n_seeds"]),
                      _mean_sd(row["accuracy"]), _mean_sd(row["macro_f1"]),
                      "" if diff is None else f"{diff * 100:+.2f}", Text(paired.get("verdict", "")))
    console.print(table)
    noise = (result.summary or {}).get("noise") or {}
    if noise.get("text"):
        console.print(noise["text"], highlight=False, markup=False)
    for line in result.failed:
        err_console.print(f"failed: {line}", highlight=False, markup=False)
    if result.skipped:
        console.print(f"{result.skipped} runs were finished earlier and kept", highlight=False)
    for name in ("study.csv", "study.json"):
        console.print(f"{name}: {result.out / name}", highlight=False)
    console.print(f"report: {result.report}", highlight=False)
    if result.failed:
        raise typer.Exit(1)


def _mean_sd(stat: dict) -> str:
    if stat.get("mean") is None:
        return "-"
    return f"{stat['mean']:.4f}" + (f" ± {stat['sd']:.4f}" if stat.get("sd") is not None else "")
