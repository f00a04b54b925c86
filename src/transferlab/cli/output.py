"""What the CLI prints for a finished run: stage lines, result tables, warnings, CSV text."""

from __future__ import annotations

from rich.table import Table

from transferlab.cli.app import console, err_console

# The first line of `predict --csv`: how an earlier one is told from a user's file it must not overwrite.
PREDICTIONS_HEADER = "path,predicted,probability,error,top"


def print_stage(stage: dict) -> None:
    console.print(f"stage {stage['index']} ({stage['train']}): {stage['epochs_run']} epochs, "
                  f"best val acc {stage['best_val_acc']:.4f}, {stage['seconds']:.0f}s", highlight=False)
    console.file.flush()  # stdout is block-buffered in a pipe: show the line when the stage ends

def print_lr_find(config, steps: int) -> None:
    from transferlab.pipelines.lr_find import find_learning_rate

    result = find_learning_rate(config, steps=steps)
    if result.suggestion is None:
        console.print(f"no suggestion: the loss never fell steadily over {len(result.lrs)} steps; "
                      "look at the plot, or raise --lr-find-steps", highlight=False)
    else:
        console.print(f"suggested lr for the first stage ({result.stage}): [bold]{result.suggestion:.2g}[/bold] "
                      f"(the recipe has {result.lr_field}: {result.recipe_lr:g}); "
                      f"set it as the first stage's {result.lr_field} in the recipe", highlight=False)
    console.print(f"curve: {result.plot}\nrecord: {result.record}", highlight=False)

def print_finetune_result(result) -> None:  # stage lines were printed as each stage ended
    print_run_result(result, ("backbone", "method", "best stage", "resolution", "precision", "images"))

def print_probe_result(result) -> None:
    print_run_result(result, ("backbone", "classifier", "layers", "resolution", "precision", "images", "features"))

def print_run_result(result, keys: tuple[str, ...]) -> None:
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

def csv_text(header: list[str], rows: list[list]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()
