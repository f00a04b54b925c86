"""`transferlab` command line: each command parses, checks plain values, calls one library
function, prints. The commands register themselves on `app` when their module is imported,
in the order `--help` lists them: data first, then training, then finished runs."""

# isort: off
from transferlab.cli import data_commands  # noqa: F401  (registers backbones, doctor, rank, embed)
from transferlab.cli import train_commands  # noqa: F401  (registers probe, finetune, demo)
from transferlab.cli import study_commands  # noqa: F401  (registers study)
from transferlab.cli import search_commands  # noqa: F401  (registers search)
from transferlab.cli import prune_commands  # noqa: F401  (registers prune)
from transferlab.cli import ensemble_commands  # noqa: F401  (registers ensemble)
from transferlab.cli import auto_commands  # noqa: F401  (registers auto)
from transferlab.cli import run_commands  # noqa: F401  (registers predict, explain, compare, serve, export, report)
# isort: on
from transferlab.cli.app import app, main

__all__ = ["app", "main"]
