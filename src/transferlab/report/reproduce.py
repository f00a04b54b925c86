"""The "reproduce" block of a report: the command, the seed and the library versions.

Read at the end of a run, in the process that made it, so `sys.argv` is the command.
"""

from __future__ import annotations

import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path

from transferlab.errors import TransferlabError
from transferlab.safe_yaml import read_yaml_file

# The libraries whose versions change numbers: a figure is reproducible only with them.
LIBRARIES = ("transferlab", "torch", "torchvision", "timm", "scikit-learn", "numpy", "lightning", "pillow")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def command_line(argv: list[str] | None = None) -> str:
    """How this run was started: the transferlab command, or 'Python API' when it was called from code."""
    argv = list(sys.argv if argv is None else argv)
    program = Path(argv[0]).name if argv else ""
    if program in ("transferlab", "__main__.py"):
        return shlex.join(["transferlab", *argv[1:]])
    return f"Python API ({shlex.join([program, *argv[1:]]) if program else 'interactive'})"


def reproduce_info(run_dir: Path) -> dict:
    """Command, seed (from the run's config.yaml) and versions of the libraries that made the run."""
    seed = None
    config = Path(run_dir) / "config.yaml"
    if config.is_file():
        try:
            loaded = read_yaml_file(config, "run config")
            seed = loaded.get("seed") if isinstance(loaded, dict) else None
        except TransferlabError:
            seed = None
    return {"command": command_line(), "seed": seed, "versions": library_versions()}
