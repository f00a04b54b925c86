"""Torch's CPU threads on a shared machine: OpenMP's wait policy and the intra-op thread count.

torch's PyPI wheel parallelises each operator with OpenMP (libgomp). By default an idle
libgomp thread spins (GOMP_SPINCOUNT: 300,000 pause loops, milliseconds) at the end of each
of the thousands of parallel regions of a step before it sleeps. On a quiet machine that
saves a wake-up; on a machine whose cores are all taken, the spinning thread burns the time
slice that its sibling (which the region is waiting for) and the other processes need.
benchmarks/threads_load.py measures it (BENCHMARKS.md, section threads_load): against
CPU-bound competitors on 2 cores, the default spin-wait costs several times the CPU per step
and far more than the fair share of wall time; the passive policy and one thread do not.

So, both overridable by the user:
- `default_wait_policy()`, called by transferlab/__init__.py before torch is imported:
  OMP_WAIT_POLICY=PASSIVE when other processes keep at least half the CPUs busy as the
  command starts (on a quiet machine, passive waiting is the slower one), unless
  OMP_WAIT_POLICY or GOMP_SPINCOUNT is already set; TRANSFERLAB_WAIT_POLICY=passive|spin
  forces either. It changes no number (the work is split the same way), only how idle
  threads wait; the choice holds for the whole command;
- `apply_thread_policy()`, called where a command starts (cli/app.py main()): a thread count
  from TRANSFERLAB_THREADS; with TRANSFERLAB_THREADS=auto, fewer threads when other
  processes already keep the CPUs busy. OMP_NUM_THREADS / MKL_NUM_THREADS beat `auto`.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path

from transferlab.errors import TransferlabError

THREADS_ENV = "TRANSFERLAB_THREADS"
AUTO = "auto"
# The count chosen from the load is opt-in: torch's numbers depend on the thread count
# (reductions are split differently: 1 and 2 threads already disagree after a few SGD steps),
# so by default a run's results, and a resumed run's exact agreement with a straight one,
# would depend on what else ran when it started. The wait policy changes no number.
AUTO_BY_DEFAULT = False
# Variables torch (and the OpenMP/MKL runtimes under it) read for the intra-op thread count.
TORCH_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# Variables that already say how idle OpenMP threads wait: the user's choice stands.
WAIT_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
# auto: passive when other processes keep at least half the CPUs busy at start; passive; spin
# (libgomp's default). Changes no number either way.
WAIT_POLICY_ENV = "TRANSFERLAB_WAIT_POLICY"
WAIT_CHOICES = ("auto", "passive", "spin")


def default_wait_policy(environ: MutableMapping[str, str] = os.environ,
                        busy: Callable[[], float] | None = None, cores: Callable[[], int] | None = None) -> bool:
    """Make idle OpenMP threads sleep rather than spin when other processes keep the CPUs busy
    (or TRANSFERLAB_WAIT_POLICY=passive), unless the user chose; True if it set PASSIVE.

    Not on a quiet machine: there passive waiting cost 9-46% per step (threads_load, K=0),
    because every parallel region then ends with a wake-up. Under load, spinning cost far more
    (the module docstring). The check is the one `apply_thread_policy` uses: the 1-minute load
    average, and only when that looks busy, the tasks runnable right now (so the lag of our
    own previous command does not count). libgomp reads the variable once, when torch loads:
    with torch already imported, setting it would change nothing here and only mislead child
    processes, so it is left alone.
    """
    if "torch" in sys.modules or any(name in environ for name in WAIT_ENV):
        return False
    choice = environ.get(WAIT_POLICY_ENV, AUTO).strip().lower()
    if choice not in WAIT_CHOICES:
        return False  # reported by apply_thread_policy, which runs before any command
    if choice == AUTO:
        try:
            n = (cores or usable_cpus)()
            load1 = os.getloadavg()[0]
            others = busy_cpus(load1, (busy or runnable_others)()) if load1 >= n / 2 else 0.0
        except (OSError, ValueError, IndexError):
            return False
        if others < n / 2:
            return False
    elif choice != "passive":
        return False
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


@dataclass(frozen=True)
class ThreadDecision:
    """What `apply_thread_policy` chose: `threads` None leaves torch's default alone."""

    threads: int | None
    source: str  # TRANSFERLAB_THREADS, OMP_NUM_THREADS, MKL_NUM_THREADS, default, load, quiet, unknown
    cores: int | None = None
    load: float | None = None  # 1-minute load average
    busy: float | None = None  # CPUs other processes keep busy (see busy_cpus)

    @property
    def message(self) -> str | None:
        """The one line a command logs when it runs with fewer threads because of the load."""
        if self.source != "load" or self.threads is None:
            return None
        plural = "" if self.threads == 1 else "s"
        return (f"load {self.load:.1f} on {self.cores} cores: using {self.threads} torch thread{plural} "
                f"({THREADS_ENV}={AUTO})")

    def summary(self) -> str:
        figures = "" if self.load is None else f", load {self.load:.2f} on {self.cores} CPUs"
        figures += "" if self.busy is None else f", {self.busy:.2f} busy"
        return f"threads {self.threads or 'default'} ({self.source}{figures})"


def choose_threads(cores: int, busy: float, default: int) -> int:
    """Intra-op threads for a machine with `cores` CPUs of which `busy` are kept busy by others.

    One thread per CPU left free (rounded to the nearest), at least one, never more than
    torch's `default`: against busy CPUs, a second thread mostly waits at the end of each
    parallel region for its descheduled sibling (benchmarks/threads_load.py).
    """
    free = cores - max(0.0, busy)
    return max(1, min(default, int(free + 0.5)))


def busy_cpus(load1: float, runnable_others: float) -> float:
    """CPUs that other processes keep busy: the smaller of the 1-minute load average
    (sustained load; but it still counts a command that ended a minute ago, our own previous
    run included) and the tasks runnable right now besides us (current; but a passing burst)."""
    return max(0.0, min(load1, runnable_others))


def runnable_others(samples: int = 10, interval: float = 0.01, path: Path = Path("/proc/loadavg")) -> float:
    """Mean number of runnable tasks other than this one over `samples` readings of the
    kernel's instantaneous count (the 4th field of /proc/loadavg, "running/total")."""
    counts = []
    for i in range(samples):
        counts.append(int(path.read_text().split()[3].split("/")[0]))
        if i + 1 < samples:
            time.sleep(interval)
    return max(0.0, statistics.mean(counts) - 1)  # the reading task (us) is running


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask: taskset, cpusets)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def torch_default_threads(cpus: int) -> int:
    """The intra-op thread count torch uses when nobody chose one: one per physical core
    (hyper-threads share a core), within the CPUs we may use; torch's own, once loaded."""
    if "torch" in sys.modules:
        return sys.modules["torch"].get_num_threads()
    try:
        cores = set()
        for cpu in os.sched_getaffinity(0):
            topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
            cores.add(tuple((topology / name).read_text().strip() for name in ("physical_package_id", "core_id")))
        return max(1, min(cpus, len(cores)))
    except (AttributeError, OSError):
        return cpus


def env_threads(environ: MutableMapping[str, str]) -> ThreadDecision | None:
    """The user's choice: TRANSFERLAB_THREADS=N, else a variable torch reads itself, else
    torch's default; None when the count is to be chosen from the load (`auto`)."""
    raw = environ.get(THREADS_ENV, "").strip()
    if raw.isascii() and raw.isdigit() and int(raw) >= 1:
        return ThreadDecision(int(raw), THREADS_ENV)
    if raw.lower() not in ("", AUTO):
        raise TransferlabError(f"{THREADS_ENV} must be '{AUTO}' or a whole number of threads, at least 1, "
                               f"not {raw!r}")
    for name in TORCH_THREAD_ENV:
        if environ.get(name, "").strip():
            return ThreadDecision(None, name)  # torch reads it when it loads: nothing to do
    if raw.lower() == AUTO or AUTO_BY_DEFAULT:
        return None
    return ThreadDecision(None, "default")


def load_threads(cores: int, default: int, load1: float, sample: Callable[[], float]) -> ThreadDecision:
    """The thread count on `cores` usable CPUs where torch would use `default` threads, with
    a 1-minute load average `load1`; `sample` counts the tasks runnable right now besides us
    (`runnable_others`)."""
    if choose_threads(cores, load1, default) >= default:
        return ThreadDecision(None, "quiet", cores, load1)
    # The load average says busy; but it lags by a minute, so: busy now? Sampled only here,
    # so a quiet machine pays nothing for the check.
    busy = busy_cpus(load1, sample())
    threads = choose_threads(cores, busy, default)
    if threads >= default:
        return ThreadDecision(None, "quiet", cores, load1, busy)
    return ThreadDecision(threads, "load", cores, load1, busy)


def apply_thread_policy(log: Callable[[str], None] | None = None,
                        environ: MutableMapping[str, str] = os.environ) -> ThreadDecision:
    """Decide (`env_threads`; with `auto`, `load_threads`) and apply: through OMP_NUM_THREADS
    before torch is loaded (libgomp, MKL and torch read it then; child processes inherit it),
    and torch.set_num_threads if it already is. `log` gets one line when the load cut the threads."""
    wait = environ.get(WAIT_POLICY_ENV, AUTO).strip().lower()
    if wait not in WAIT_CHOICES:
        raise TransferlabError(f"{WAIT_POLICY_ENV} must be one of {', '.join(WAIT_CHOICES)}, not "
                               f"{environ.get(WAIT_POLICY_ENV, '')[:40]!r}")
    decision = env_threads(environ)
    if decision is None:
        try:
            cores = usable_cpus()
            decision = load_threads(cores, torch_default_threads(cores), os.getloadavg()[0], runnable_others)
        except (OSError, ValueError, IndexError):  # no load average, no /proc: leave torch alone
            decision = ThreadDecision(None, "unknown")
    if decision.threads is not None:
        environ["OMP_NUM_THREADS"] = str(decision.threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(decision.threads)
        if log is not None and decision.message:
            log(decision.message)
    return decision
