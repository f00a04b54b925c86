"""`transferlab` command line: each command parses, checks plain values, calls one library
function, prints. The commands register themselves on `app` when their module is imported,
in the order `--help` lists them: data first, then training, then finished runs."""

import logging
import sys

# torch's compiler stack (torch._dynamo, which torchvision's ops import) loads Triton when it is
# installed, and torch's PyPI wheel installs it: 77 MB of RSS in every command for a GPU kernel
# compiler that nothing here uses (no torch.compile). A command's process is the CLI's own, so
# Triton is kept out of it (import triton fails, torch's probes see it absent); a process that
# imported torch first, e.g. a user's script or the test suite, is left alone.
if "torch" not in sys.modules:
    sys.modules.setdefault("triton", None)
    # torch.utils.flop_counter (the latency estimate uses it) warns on import when Triton is
    # absent from a CUDA build of torch; its triton-kernel counting is nothing we use.
    logging.getLogger("torch.utils.flop_counter").setLevel(logging.ERROR)

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
