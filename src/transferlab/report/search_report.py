"""search.html: one self-contained page for a hyperparameter search.

Optuna's own matplotlib plots (optimization history, parameter importances, parallel
coordinates), saved under plots/ and inlined as data: URIs, then the trials table and the best
recipe. Takes the Optuna study and plain rows (the pipeline builds them); trial attributes may
come from a database other machines write to, so every value is escaped by the template and
the page's Content-Security-Policy lets no script run.
"""

from __future__ import annotations

import base64
import csv
import io
import warnings
from collections.abc import Callable
from pathlib import Path

from markupsafe import Markup

from transferlab.atomic import write_text
from transferlab.errors import one_line
from transferlab.plotting import plt, save_figure
from transferlab.report.html import REPORT_CSP
from transferlab.report.pages import write_page
from transferlab.safe_yaml import short_repr

TRIAL_COLUMNS = ["number", "state", "value", "epochs", "seconds", "retry_of", "worker", "run_dir", "note"]


def write_search_report(path: str | Path, *, study, title: str, summary: dict, header: list[str],
                        rows: list[list[str]], best_recipe: str | None, plots_dir: Path) -> Path:
    figures, notes = draw_plots(study, Path(plots_dir))
    numeric = {i for i, name in enumerate(header) if name in ("number", "value", "epochs", "seconds")}
    return write_page(
        path, "search.html", title=title, csp=Markup(REPORT_CSP),
        summary=[[str(k), str(v)] for k, v in summary.items()], figures=figures, notes=notes,
        header=header, rows=rows, numeric=numeric, best_recipe=best_recipe,
    )


def trial_cells(trial, params: dict) -> dict:
    """A trial (Optuna's FrozenTrial) as text cells, with `params` (key -> label) under "params".

    Its attributes come from a database other workers write to: shown, never used as paths.
    """
    attrs, system = trial.user_attrs, trial.system_attrs
    retry_of = system.get("failed_trial", attrs.get("retry_of"))  # a heartbeat retry, or a Ctrl-C one
    state = trial.state.name.lower()
    note = _text(attrs.get("error"))
    if attrs.get("surplus"):
        note = "surplus: the study had its trials when this one started (not run)"
    elif state == "fail" and not note:
        note = "its worker stopped (killed?): queued again"
    value = trial.value if state == "complete" else None
    return {"number": trial.number, "state": state, "value": "" if value is None else f"{value:.4f}",
            "epochs": _text(attrs.get("epochs")), "seconds": _text(attrs.get("seconds")), "retry_of": _text(retry_of),
            "worker": _text(attrs.get("worker")), "run_dir": _text(attrs.get("run_dir")), "note": note[:300],
            "params": dict(params)}


def _text(value) -> str:
    if value is None:
        return ""
    return str(value) if isinstance(value, (str, int, float)) else short_repr(value)


def trials_table(rows: list[dict], keys: list[str]) -> tuple[list[str], list[list[str]]]:
    """`trial_cells` rows as a header and lists of cells: the fixed columns, then one per searched key."""
    return (TRIAL_COLUMNS + list(keys),
            [[str(r[c]) for c in TRIAL_COLUMNS] + [str(r["params"].get(k, "")) for k in keys] for r in rows])


def write_csv(path: str | Path, header: list[str], rows: list[list[str]]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buffer.getvalue())
    return Path(path)


def _complete(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _one_complete(study) -> str | None:
    return None if _complete(study) else "needs a complete trial"


def _differing_params(study) -> str | None:
    """Importances compare how the value moves with each parameter: two trials that differ at least."""
    complete = _complete(study)
    if len(complete) >= 2 and any(len({repr(t.params.get(k)) for t in complete}) > 1 for k in complete[0].params):
        return None
    return "needs at least two complete trials whose parameters differ"


def _plot_functions() -> list[tuple[str, str, Callable, Callable]]:
    from optuna.visualization import matplotlib as optuna_plots

    # file stem, caption, Optuna's plot, what it needs (None when the study has it, else a note)
    return [
        ("optimization_history", "optimization history", optuna_plots.plot_optimization_history, _one_complete),
        ("param_importances", "parameter importances", optuna_plots.plot_param_importances, _differing_params),
        ("parallel_coordinate", "parallel coordinates", optuna_plots.plot_parallel_coordinate, _one_complete),
    ]


def draw_plots(study, plots_dir: Path) -> tuple[list[dict], list[str]]:
    """The plots as {data (base64 PNG), caption}, and a note for each one that could not be drawn."""
    from optuna.exceptions import ExperimentalWarning

    figures, notes = [], []
    for stem, caption, plot, needs in _plot_functions():
        missing = needs(study)
        if missing is not None:
            notes.append(f"{caption}: not drawn, {missing}")
            continue
        before = set(plt.get_fignums())
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                axes = plot(study)
            # Optuna marks its matplotlib backend experimental (it is what the page needs); what
            # else it warns about (e.g. importances all equal) belongs under the plot.
            notes += [f"{caption}: {one_line(w.message, with_type=False)}" for w in caught
                      if not issubclass(w.category, ExperimentalWarning)]
            figure = axes.figure
            figure.set_size_inches(9, 5)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "tight layout not applied": the plot is drawn anyway
                figure.tight_layout()
            png = save_figure(figure, plots_dir / f"{stem}.png")
        except (ValueError, RuntimeError, TypeError, ZeroDivisionError) as exc:
            notes.append(f"{caption}: not drawn ({one_line(exc)})")
            continue
        finally:
            for number in set(plt.get_fignums()) - before:  # the plot's figures, drawn or not
                plt.close(number)
        figures.append({"data": base64.b64encode(png.read_bytes()).decode("ascii"), "caption": caption})
    return figures, [note.rstrip(".") for note in notes]
