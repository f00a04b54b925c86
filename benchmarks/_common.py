"""Shared helpers for the benchmark scripts: machine description, tables, BENCHMARKS.md sections.

Each benchmark owns one or more sections of BENCHMARKS.md, delimited by
`<!-- BEGIN name -->` / `<!-- END name -->`; re-running a benchmark replaces only its own
section (under a file lock, so a background run and a foreground one can both write).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import platform
import re
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"
DATA_DEFAULT = "/work/shared/datasets/architectural-heritage/train_val"
BASELINE_DEFAULT = "/work/shared/baselines/architectural-heritage-paper-f1.csv"
PLAIN_EXTRACT = "/work/shared/bench/plain_extract.py"

_HEADER = """# Benchmarks

Figures measured by the scripts in `benchmarks/`. Each section is written by one script
(re-running it replaces that section) and states the exact command, the date and the machine.
Ratios are always measured against the plain reference in the same run, because the
machine is shared and absolute figures drift.
"""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="ignore").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags_of_interest() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni") if f in flags]


def machine_info() -> dict:
    import torch  # local: keep `--help` fast

    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu_model(),
        "flags": cpu_flags_of_interest(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "loadavg": [round(v, 2) for v in os.getloadavg()],
    }


def machine_line(info: dict) -> str:
    return (
        f"{info['nproc']} CPUs (nproc), {info['cpu']} [{', '.join(info['flags'])}], "
        f"torch {info['torch']} ({info['torch_threads']} intra-op threads), Python {info['python']}"
        + (f"; load average at the end {info['loadavg'][0]} / {info['loadavg'][1]} / {info['loadavg'][2]} "
           "(1/5/15 min; the machine is shared)" if info.get("loadavg") else "")
    )


def now() -> str:
    return _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


def command_line(argv: list[str] | None = None, script: str | None = None) -> str:
    """The command that reproduces this run, relative to the repository root."""
    argv = list(sys.argv[1:] if argv is None else argv)
    script = script or sys.argv[0]
    try:
        script = str(Path(script).resolve().relative_to(REPO_ROOT))
    except ValueError:
        pass
    return " ".join([".venv/bin/python", shlex.quote(script), *map(shlex.quote, argv)])


def md_table(headers: list[str], rows: list[list]) -> str:
    def cell(v) -> str:
        return "" if v is None else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


@contextmanager
def _locked(path: Path):
    lock = path.with_name("." + path.name + ".lock")
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def update_section(name: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Insert or replace the section `name` of BENCHMARKS.md with `body` (markdown)."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    with _locked(path):
        text = path.read_text(encoding="utf-8") if path.exists() else _HEADER
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _: block, text, count=1)
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def wait_peak(process, command: list[str]) -> float:
    """Wait for `process`; its own peak RSS in MiB (os.wait4: that child's usage, not the largest
    child's so far). Raises CalledProcessError when it failed."""
    import os
    import subprocess

    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, command)
    return usage.ru_maxrss / 1024


# Runs a command and prints its peak RSS (KiB) as the last line. A child's ru_maxrss also counts
# the RSS of the process it was forked from (Linux records the old memory's high-water mark at
# exec), so a benchmark process that already holds torch and a probe would lend its own peak to
# every command it starts: this small launcher is what starts the command instead.
_PEAK_LAUNCHER = ("import os, subprocess, sys; child = subprocess.Popen(sys.argv[1:]); "
                  "_, status, usage = os.wait4(child.pid, 0); "
                  "print(f'\\nPEAK_KIB={usage.ru_maxrss}', flush=True); "
                  "sys.exit(os.waitstatus_to_exitcode(status))")


def run_with_peak(cmd: list[str], env: dict | None = None, cwd: str | None = None) -> tuple[int, str, float | None]:
    """(return code, stdout and stderr, the command's own peak RSS in MiB) of `cmd`."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _PEAK_LAUNCHER, *cmd], capture_output=True, text=True, env=env,
                          cwd=cwd)
    text = done.stdout + done.stderr
    marks = [line for line in done.stdout.splitlines() if line.startswith("PEAK_KIB=")]
    peak = int(marks[-1].split("=", 1)[1]) / 1024 if marks else None
    return done.returncode, text, peak
