#!/usr/bin/env python3
"""Torch threads on a busy machine: fixed workloads, quiet and against K CPU-bound competitors.

Each (load, configuration, workload) cell runs in a fresh subprocess, so the OpenMP
environment (read by libgomp once, when torch loads it) really differs between cells:

- workloads (tf_efficientnet_lite0, packaged weights, channels-last, bf16 autocast when
  --precision bf16, as the fine-tune and the extraction run it):
  `train`: forward + backward + SGD step of the whole network (batch 32 at 128 px);
  `infer`: inference of the whole network (batch 64), what caching activations and
  feature extraction do (the fast recipe's first stage);
  `top`: forward + backward + SGD step of blocks.6 + neck + head on cached activations
  (batch 64), the fast recipe's second stage: small tensors, many short parallel regions;
- configurations: torch's default (one thread per CPU, libgomp's default spin-wait);
  OMP_WAIT_POLICY=PASSIVE; GOMP_SPINCOUNT=1000 (and 10000 on request); one thread
  (OMP_NUM_THREADS=1);
  `transferlab`: what `transferlab` commands do (import transferlab, then
  transferlab.threads.apply_thread_policy(), as cli/app.py main() calls it), and `auto`:
  the same with TRANSFERLAB_THREADS=auto (threads chosen from the load);
- load: K = 0, 1, 2 competing processes (`while True: pass`, each in its own process
  group, killed in a finally block, and ending on their own if this script dies).

Per cell: seconds per step (wall over the measured steps / steps, warm-up excluded), CPU
seconds per step of the worker (all its threads: the work is fixed, so more CPU per step
means CPU burnt waiting), context switches per step, and the slowdown against the same
configuration on the quiet machine next to the "fair" slowdown a CFS share predicts.
Replaces its section of BENCHMARKS.md.

    .venv/bin/python benchmarks/threads_load.py
    .venv/bin/python benchmarks/threads_load.py --steps 3 --warmup 1 --no-write   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import (
        BENCHMARKS_MD,
        REPO_ROOT,
        command_line,
        machine_info,
        machine_line,
        md_table,
        now,
        update_section,
    )
else:
    from ._common import (
        BENCHMARKS_MD,
        REPO_ROOT,
        command_line,
        machine_info,
        machine_line,
        md_table,
        now,
        update_section,
    )

SECTION = "threads_load"
BACKBONE = "tf_efficientnet_lite0"
# Variables the configurations set; scrubbed from every worker's environment first so the
# user's shell cannot leak into a cell.
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "TRANSFERLAB_THREADS")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass(frozen=True)
class Config:
    label: str
    env: dict = field(default_factory=dict)
    via_transferlab: bool = False  # import transferlab first and apply its policy, as main() does


CONFIGS = {
    "default": Config("torch default"),
    "passive": Config("OMP_WAIT_POLICY=PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}),
    "spin1k": Config("GOMP_SPINCOUNT=1000", {"GOMP_SPINCOUNT": "1000"}),
    "spin10k": Config("GOMP_SPINCOUNT=10000", {"GOMP_SPINCOUNT": "10000"}),
    "one": Config("1 thread (OMP_NUM_THREADS=1)", {"OMP_NUM_THREADS": "1"}),
    "transferlab": Config("transferlab (wait policy by load, torch's threads)", via_transferlab=True),
    "auto": Config("transferlab, TRANSFERLAB_THREADS=auto", {"TRANSFERLAB_THREADS": "auto"}, via_transferlab=True),
}

# (batch size, default measured steps) per workload; steps sized for ~10-20 s per quiet cell.
WORKLOADS = {"train": (32, 12), "infer": (64, 20), "top": (64, 40)}
# The default run leaves out spin10k (measured on the shared machine: between the default
# and PASSIVE under load, no better than GOMP_SPINCOUNT=1000 quiet); `--configs` adds it.
DEFAULT_CONFIGS = ("default", "passive", "spin1k", "one", "transferlab", "auto")


# --------------------------------------------------------------------------- worker (one cell)

def _thread_cpu() -> dict[int, float]:
    """CPU seconds (user + system) of each thread of this process, from /proc/self/task."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return out


def _build(workload: str, batch: int, res: int, precision: str):
    """The step function of `workload` (all tensors built here, outside the timing)."""
    import torch

    from transferlab.backbones import create_backbone

    torch.manual_seed(0)
    model = create_backbone(BACKBONE).model
    model.reset_classifier(10)
    model = model.to(memory_format=torch.channels_last)
    images = torch.randn(batch, 3, res, res).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))
    bf16 = precision == "bf16"

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    if workload == "infer":
        model.eval()

        def step():
            with torch.inference_mode(), autocast():
                model(images)
        return step
    if workload == "top":
        with torch.no_grad(), autocast():  # the cached activations: input of blocks.6, stored in bf16
            cached = model.blocks[:6](model.bn1(model.conv_stem(images))).to(torch.bfloat16)
        cached = cached.float().contiguous(memory_format=torch.channels_last)
        net = torch.nn.Sequential(model.blocks[6], model.conv_head, model.bn2, model.global_pool, model.classifier)
        return _train_step(net.train(), cached, labels, autocast)
    return _train_step(model.train(), images, labels, autocast)


def _train_step(net, inputs, labels, autocast):
    import torch

    optimiser = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)

    def step():
        with autocast():
            loss = torch.nn.functional.cross_entropy(net(inputs).float(), labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return step


def worker(args) -> dict:
    config = CONFIGS[args.config]
    decision = None
    if config.via_transferlab:
        import transferlab  # noqa: F401  (sets the OpenMP wait policy before torch loads)
        from transferlab.threads import apply_thread_policy

        decision = apply_thread_policy(log=lambda line: print(line, file=sys.stderr, flush=True))
    import torch  # the other configurations: torch loads libgomp before transferlab is imported

    batch = WORKLOADS[args.workload][0]
    step = _build(args.workload, batch, args.res, args.precision)
    for _ in range(args.warmup):
        step()
    times, cpu0, threads0 = [], resource.getrusage(resource.RUSAGE_SELF), _thread_cpu()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    cpu1, threads1 = resource.getrusage(resource.RUSAGE_SELF), _thread_cpu()
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    per_thread = sorted((threads1[k] - threads0.get(k, 0.0) for k in threads1), reverse=True)
    return {
        "s_per_step": wall / args.steps, "median_step": statistics.median(times), "min_step": min(times),
        "max_step": max(times),
        "cpu_per_step": cpu / args.steps, "cores_used": cpu / wall,
        "thread_cpu_per_step": [round(v / args.steps, 4) for v in per_thread if v > 0],
        "vol_cs_per_step": (cpu1.ru_nvcsw - cpu0.ru_nvcsw) / args.steps,
        "invol_cs_per_step": (cpu1.ru_nivcsw - cpu0.ru_nivcsw) / args.steps,
        "threads": torch.get_num_threads(), "wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "decision": decision.summary() if decision is not None else None,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# --------------------------------------------------------------------------- competitors

# A pure CPU spinner that also ends by itself once its parent (this script) is gone.
SPINNER = "import os,sys\np=int(sys.argv[1]);n=0\nwhile True:\n n+=1\n if n%2000000==0 and os.getppid()!=p: break\n"


def start_competitors(k: int) -> list[subprocess.Popen]:
    procs = []
    try:
        for _ in range(k):
            procs.append(subprocess.Popen([sys.executable, "-c", SPINNER, str(os.getpid())],
                                          start_new_session=True, stdin=subprocess.DEVNULL))
    except BaseException:
        stop_competitors(procs)
        raise
    return procs


def stop_competitors(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its own group: never anything else
        except ProcessLookupError:
            pass
        proc.wait()


# --------------------------------------------------------------------------- driver

def run_cell(args, config: str, workload: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    env.update(CONFIGS[config].env)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    steps = args.steps or WORKLOADS[workload][1]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--config", config, "--workload", workload,
           "--steps", str(steps), "--warmup", str(args.warmup), "--res", str(args.res),
           "--precision", args.precision]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.cell_timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {config}/{workload} failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args) -> dict:
    configs = args.configs.split(",")
    workloads = args.workloads.split(",")
    loads = [int(k) for k in args.loads.split(",")]
    for name in configs:
        if name not in CONFIGS:
            raise SystemExit(f"unknown configuration {name!r}; known: {', '.join(CONFIGS)}")
    for name in workloads:
        if name not in WORKLOADS:
            raise SystemExit(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
    cells: dict[tuple, list[dict]] = {}
    t_start = time.perf_counter()
    for rnd in range(args.rounds):
        for k in loads:
            procs = start_competitors(k)
            try:
                time.sleep(1.0 if k else 0.0)  # let the spinners reach the run queue
                for config in configs:
                    for workload in workloads:
                        cell = run_cell(args, config, workload)
                        cells.setdefault((k, config, workload), []).append(cell)
                        log(f"round {rnd + 1} K={k} {config:<11} {workload:<5} {cell['s_per_step']:.3f} s/step, "
                            f"{cell['cores_used']:.2f} cores, {cell['cpu_per_step']:.3f} CPU-s/step, "
                            f"threads {cell['threads']}" + (f" [{cell['decision']}]" if cell["decision"] else ""))
            finally:
                stop_competitors(procs)
    return {"cells": cells, "configs": configs, "workloads": workloads, "loads": loads,
            "minutes": (time.perf_counter() - t_start) / 60}


def fair_slowdown(threads: int, k: int, cores: int) -> float:
    """CFS share model: every runnable thread gets an equal share of the cores, so a job whose
    `threads` threads are always runnable, against k single-threaded spinners on `cores`
    cores, runs each thread at cores / (threads + k) of a core (at most 1): its time grows by
    max(1, (threads + k) / cores) over the quiet machine, if nothing is lost to waiting."""
    return max(1.0, (threads + k) / cores)


def summarise(report: dict, cores: int) -> list[dict]:
    """One row per cell: medians over rounds, slowdowns against the configuration's quiet cell."""
    rows = []
    cells = report["cells"]
    for workload in report["workloads"]:
        base = cells.get((0, "default", workload))
        base_s = statistics.median(c["s_per_step"] for c in base) if base else None
        for k in report["loads"]:
            for config in report["configs"]:
                runs = cells[(k, config, workload)]
                s = statistics.median(c["s_per_step"] for c in runs)
                quiet = cells.get((0, config, workload))
                quiet_s = statistics.median(c["s_per_step"] for c in quiet) if quiet else None
                threads = runs[0]["threads"]
                rows.append({
                    "workload": workload, "k": k, "config": config, "threads": threads, "s": s,
                    "vs_quiet": s / quiet_s if quiet_s else None, "fair": fair_slowdown(threads, k, cores),
                    "vs_default_quiet": s / base_s if base_s else None,
                    "cores_used": statistics.median(c["cores_used"] for c in runs),
                    "cpu_per_step": statistics.median(c["cpu_per_step"] for c in runs),
                    "cs": (statistics.median(c["vol_cs_per_step"] for c in runs),
                           statistics.median(c["invol_cs_per_step"] for c in runs)),
                    "decision": runs[0]["decision"], "all_s": [c["s_per_step"] for c in runs],
                })
    return rows


HEADERS = ["workload", "K", "configuration", "threads", "s/step", "vs own quiet", "fair (CFS share)",
           "vs torch default quiet", "cores used", "CPU-s/step", "ctx switches/step (vol / invol)"]


def table_rows(rows: list[dict]) -> list[list]:
    out = []
    for r in rows:
        vs_quiet = f"{r['vs_quiet']:.2f}x" if r["vs_quiet"] else "n/a"
        if r["vs_quiet"] and r["k"] and r["vs_quiet"] > 1.5 * r["fair"]:
            vs_quiet = f"**{vs_quiet}**"
        out.append([
            r["workload"], r["k"], CONFIGS[r["config"]].label, r["threads"], f"{r['s']:.3f}", vs_quiet,
            f"{r['fair']:.2f}x", f"{r['vs_default_quiet']:.2f}x" if r["vs_default_quiet"] else "n/a",
            f"{r['cores_used']:.2f}", f"{r['cpu_per_step']:.3f}", f"{r['cs'][0]:.0f} / {r['cs'][1]:.0f}",
        ])
    return out


def markdown(report: dict, rows: list[dict], info: dict, args, peak: float) -> str:
    decisions = sorted({f"K={r['k']}: {r['decision']}" for r in rows if r["decision"]})
    lines = [
        f"## Torch threads on a busy machine ({BACKBONE}, {args.res} px, {args.precision})",
        "",
        f"- command: `{report['command']}` ({report['minutes']:.1f} min)",
        f"- date: {report['date']}",
        f"- machine: {machine_line(info)}; peak RSS of the largest worker {peak:.0f} MiB",
        (f"- each cell is a fresh process (the OpenMP settings are read once, when torch loads libgomp); "
         f"{args.warmup} warm-up steps, then the measured steps; median over {args.rounds} round(s)"),
        ("- workloads: `train` = forward + backward + SGD of the whole network, batch 32; `infer` = inference, "
         "batch 64 (activation caching / feature extraction: the fast recipe's first stage); `top` = "
         "forward + backward + SGD of blocks.6 + neck + head on cached activations, batch 64 (its second stage)"),
        "- K = competing CPU-bound processes (`while True: pass`), started before and killed after each load level",
        ("- fair (CFS share) = max(1, (threads + K) / cores): the slowdown if every runnable thread gets an "
         "equal share of the cores and nothing is lost to waiting; **bold** = more than 1.5x the fair figure"),
        ("- CPU-s/step = CPU seconds of all the worker's threads per step: the work is fixed, so growth under "
         "load is CPU burnt waiting (spinning) rather than computing"),
    ]
    if decisions:
        lines.append("- transferlab's decisions: " + "; ".join(decisions))
    lines += ["", md_table(HEADERS, table_rows(rows)), "", *measured_findings(rows, report["loads"]), "",
              FINDINGS.strip()]
    return "\n".join(lines)


def _cell(rows: list[dict], workload: str, k: int, config: str) -> dict | None:
    return next((r for r in rows if (r["workload"], r["k"], r["config"]) == (workload, k, config)), None)


def measured_findings(rows: list[dict], loads: list[int]) -> list[str]:
    """The comparisons the conclusions rest on, read off this run's table."""
    out = []
    top_k = max(loads)
    for workload in dict.fromkeys(r["workload"] for r in rows):
        parts = []
        for config, spec in CONFIGS.items():
            quiet, busy = _cell(rows, workload, 0, config), _cell(rows, workload, top_k, config)
            if not (quiet and busy) or not top_k:
                continue
            parts.append(f"{spec.label}: {busy['vs_quiet']:.1f}x the quiet time (fair {busy['fair']:.1f}x), "
                         f"CPU per step x{busy['cpu_per_step'] / quiet['cpu_per_step']:.1f}")
        if parts:
            out.append(f"- `{workload}`, K={top_k} against quiet: " + "; ".join(parts))
        base = _cell(rows, workload, 0, "default")
        quiet_costs = [f"{CONFIGS[c].label} {cell['s'] / base['s']:.2f}x" for c in CONFIGS if c != "default"
                       and base and (cell := _cell(rows, workload, 0, c))]
        if quiet_costs:
            out.append(f"- `{workload}` on the quiet machine, against torch's default: " + "; ".join(quiet_costs))
    return out


# Written from the measurements (see the preliminary figures in the lead's report); the table
# and the lines above it are this run's evidence.
FINDINGS = """
**Why a busy machine costs far more than its CPU share.** torch's PyPI wheel runs its intra-op
parallelism on libgomp (`torch.__config__.parallel_info()`: "ATen parallel backend: OpenMP",
libgomp.so.1 bundled). Every operator is a parallel region that ends at a barrier, and with
`OMP_WAIT_POLICY` unset libgomp makes an idle thread spin `GOMP_SPINCOUNT` = 300,000 pause
loops (shown by `OMP_DISPLAY_ENV=VERBOSE`; milliseconds) before it sleeps. Quiet, the spin
saves a wake-up. Against competitors, the thread that finishes its half first spins on a core
while the half it waits for sits in the run queue behind a competitor, often behind the
spinner itself: the spinning eats the job's own CPU share, so CPU seconds per step (fixed
work) grow several-fold and every one of the thousands of regions per step waits for a
descheduled thread. The passive policy (spin count 0: sleep at once) keeps CPU per step at
its quiet value; one thread has no barrier at all.

**What transferlab does.** `transferlab/__init__.py` sets `OMP_WAIT_POLICY=PASSIVE` before
torch is first imported when other processes keep at least half the CPUs busy as the command
starts (the `transferlab` rows: spinning at K=0, 0 voluntary context switches per step;
passive at K=1 and 2), unless `OMP_WAIT_POLICY` or `GOMP_SPINCOUNT` is set;
`TRANSFERLAB_WAIT_POLICY=passive|spin` forces either. Not always: on the quiet machine passive
cost 1.09-1.23x here and 1.39-1.46x in an earlier quiet run of the same cells. The wait policy changes no
number (the work is split the same way; bitwise-equal outputs checked). With `TRANSFERLAB_THREADS=auto`
each command also (cli/app.py `main()`, `transferlab.threads.apply_thread_policy`) uses one
intra-op thread per CPU left free by other processes: busy = the smaller of the 1-minute load
average (sustained) and the tasks runnable right now (current; so our own run that just
ended does not count), sampled only when the load average says busy; one line on stderr
says so ("load 3.1 on 2 cores: using 1 torch thread (TRANSFERLAB_THREADS=auto)"). That is
opt-in because torch's numbers depend on the thread count (1 and 2 threads differ after a
few SGD steps): by default a run's results, and a resumed run's exact agreement with a
straight one, must not depend on what else ran when it started. `TRANSFERLAB_THREADS=N` fixes
the count; `OMP_NUM_THREADS` / `MKL_NUM_THREADS` beat `auto`.
"""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)), flush=True)
        return 0
    # SIGTERM must unwind through the finally blocks that kill the competitors.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.argv = list(sys.argv[1:] if argv is None else argv)
    report = run(args)
    report.update(date=now(), command=command_line(args.argv, __file__))
    info = machine_info()
    rows = summarise(report, info["nproc"])
    print(md_table(HEADERS, table_rows(rows)))
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if args.json:
        raw = {f"K={k} {c} {w}": v for (k, c, w), v in report["cells"].items()}
        Path(args.json).write_text(json.dumps({"rows": rows, "cells": raw}, indent=1, default=str))
    if not args.no_write:
        update_section(SECTION, markdown(report, rows, info, args, peak), path=Path(args.benchmarks_md))
        log(f"{args.benchmarks_md} updated")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                   help=f"comma-separated, of {', '.join(CONFIGS)} (default: %(default)s)")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated (default: %(default)s)")
    p.add_argument("--loads", default="0,1,2", help="competitor counts K (default: %(default)s)")
    p.add_argument("--steps", type=int, default=0, help="measured steps per cell (default: per workload)")
    p.add_argument("--warmup", type=int, default=3, help="unmeasured steps first (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=1, help="repeat everything; medians (default: %(default)s)")
    p.add_argument("--res", type=int, default=128)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--cell-timeout", type=float, default=900.0, help="seconds before a cell is abandoned")
    p.add_argument("--json", default=str(Path(tempfile.gettempdir()) / "transferlab-threads-load.json"))
    p.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    p.add_argument("--benchmarks-md", default=str(BENCHMARKS_MD), help="the file whose section is replaced")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", default="default", help=argparse.SUPPRESS)
    p.add_argument("--workload", default="train", help=argparse.SUPPRESS)
    return p


if __name__ == "__main__":
    sys.exit(main())
