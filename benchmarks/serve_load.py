#!/usr/bin/env python3
"""Load test of `transferlab serve`: N concurrent clients for a fixed time, per engine.

For each engine (torch, onnx, openvino, openvino-bf16) the server runs in its own subprocess on 127.0.0.1 (the
only address any traffic goes to). N async httpx clients each POST real images to
/predict back to back for --seconds; the script records requests/s, p50/p99 latency,
server errors (5xx) and connection errors separately, and the server's own batching
figures from /health. The run is `--run`, else `runs/demo` (made by `make demo`), else
a small probe on generated images. The ONNX engine needs model/model.onnx: exported
first (with its parity check) if missing. Replaces its section of BENCHMARKS.md.

    .venv/bin/python benchmarks/serve_load.py --clients 16 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import REPO_ROOT, command_line, fmt, machine_info, machine_line, md_table, now, update_section
else:
    from ._common import REPO_ROOT, command_line, fmt, machine_info, machine_line, md_table, now, update_section

HOST = "127.0.0.1"  # never anything else: the benchmark talks to its own server only
SECTION = "serve_load"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- set-up

def resolve_run(arg: str | None) -> tuple[Path, str]:
    if arg:
        return Path(arg), f"`{arg}`"
    demo = REPO_ROOT / "runs" / "demo"
    if (demo / "run.json").is_file():
        return demo, "`runs/demo` (elpv solar cells, `make demo`)"
    log("no runs/demo: making a small probe run on generated images (test_resnet)")
    sys.path.insert(0, str(REPO_ROOT))
    from tests.conftest import make_image_folder
    from transferlab.pipelines.probe import ProbeConfig, run_probe

    root = Path(tempfile.mkdtemp(prefix="tl-serve-load-"))
    data = make_image_folder(root / "data", per_class=12, size=96)
    run_probe(ProbeConfig(data=str(data), out=str(root / "run"), backbone="test_resnet", resolution=64,
                          workers=0, progress=False, precision="fp32", cache_dir="", error_grid=0))
    return root / "run", "a generated probe run (test_resnet, 64 px)"


def load_images(run: Path, limit: int) -> list[tuple[str, bytes]]:
    """Real images named in the run's predictions.csv (paths relative to the repository)."""
    images: list[tuple[str, bytes]] = []
    table = run / "predictions.csv"
    if table.is_file():
        with open(table, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                path = Path(row["path"])
                path = path if path.is_absolute() else REPO_ROOT / path
                if path.is_file():
                    images.append((path.name, path.read_bytes()))
                if len(images) == limit:
                    break
    if not images:
        raise SystemExit(f"{run}: no readable images in predictions.csv to send")
    return images


def ensure_onnx(run: Path) -> dict:
    from transferlab.errors import TransferlabError
    from transferlab.inference.export import export_run
    from transferlab.serve.engines import onnx_model_path

    try:
        onnx_model_path(run)
        record = json.loads((run / "model" / "export.json").read_text(encoding="utf-8"))["onnx"]
        if "openvino" not in record:
            raise TransferlabError("exported before the OpenVINO checks existed")
        log("model/model.onnx is present and current")
    except TransferlabError:
        log("exporting model/model.onnx (with the parity check and OpenVINO's fp32/bf16 checks)")
        export_run(run, "onnx")
    return json.loads((run / "model" / "export.json").read_text(encoding="utf-8"))["onnx"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def start_server(run: Path, engine: str, port: int) -> subprocess.Popen:
    code = ("from transferlab.serve import serve; "
            f"serve({str(run.resolve())!r}, host={HOST!r}, port={port}, engine={engine!r}, log_level='warning')")
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT)


def wait_healthy(port: int, server: subprocess.Popen, timeout: float = 180.0) -> dict:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited with code {server.returncode} before answering /health")
        try:
            response = httpx.get(f"http://{HOST}:{port}/health", timeout=2)
            if response.status_code == 200:
                return response.json()
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit("server did not become healthy in time")


def stop_server(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown (runs the lifespan exit)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


# --------------------------------------------------------------------------- load

async def load(port: int, images: list[tuple[str, bytes]], clients: int, seconds: float) -> dict:
    import httpx

    url = f"http://{HOST}:{port}/predict"
    latencies: list[float] = []
    counts = {"ok": 0, "4xx": 0, "5xx": 0, "connection": 0, "timeout": 0}
    first_errors: list[str] = []
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(index: int, http: httpx.AsyncClient) -> None:
        i = index
        while time.perf_counter() < deadline:
            name, data = images[i % len(images)]
            i += clients
            start = time.perf_counter()
            try:
                response = await http.post(url, files={"file": (name, data, "image/png")})
            except httpx.TimeoutException as exc:
                counts["timeout"] += 1
                first_errors.append(f"timeout: {exc!r}")
                continue
            except httpx.TransportError as exc:  # refused, reset, dropped mid-response
                counts["connection"] += 1
                first_errors.append(f"connection: {exc!r}")
                continue
            elapsed = time.perf_counter() - start
            if response.status_code >= 500:
                counts["5xx"] += 1
                first_errors.append(f"{response.status_code}: {response.text[:200]}")
            elif response.status_code >= 400:
                counts["4xx"] += 1
                first_errors.append(f"{response.status_code}: {response.text[:200]}")
            else:
                counts["ok"] += 1
                latencies.append(elapsed)

    started = time.perf_counter()
    async with httpx.AsyncClient(limits=limits, timeout=120.0) as http:
        await asyncio.gather(*(client(i, http) for i in range(clients)))
    wall = time.perf_counter() - started
    latencies.sort()

    def quantile(q: float) -> float | None:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else None

    return {"wall_s": wall, "requests": counts["ok"], "rps": counts["ok"] / wall, "p50_ms": quantile(0.50),
            "p99_ms": quantile(0.99), "mean_ms": statistics.fmean(latencies) * 1000 if latencies else None,
            **counts, "first_errors": first_errors[:5]}


def run_engine(run: Path, engine: str, images: list[tuple[str, bytes]], clients: int, seconds: float,
               warmup: int) -> dict:
    port = free_port()
    log(f"{engine}: starting the server on {HOST}:{port}")
    server = start_server(run, engine, port)
    try:
        health = wait_healthy(port, server)
        log(f"{engine}: healthy ({health['model']})")
        if warmup:  # first batches pay for lazy initialisation (oneDNN primitives, ORT arenas)
            asyncio.run(load(port, images, clients=min(clients, 4), seconds=warmup))
        before = wait_healthy(port, server)["batching"]
        log(f"{engine}: {clients} clients for {seconds:.0f} s")
        result = asyncio.run(load(port, images, clients, seconds))
        after = wait_healthy(port, server)["batching"]
        batches = after["batches"] - before["batches"]
        result["mean_batch"] = (after["images"] - before["images"]) / batches if batches else None
        model_s = after.get("model_seconds", 0.0) - before.get("model_seconds", 0.0)
        result["model_share"] = model_s / result["wall_s"] if result["wall_s"] else None
        result["largest_batch"] = after["largest"]
        result["server_alive"] = server.poll() is None
    finally:
        stop_server(server)
    log(f"{engine}: {result['requests']} ok, {result['rps']:.1f} req/s, p50 {fmt(result['p50_ms'], 0)} ms, "
        f"p99 {fmt(result['p99_ms'], 0)} ms, 5xx {result['5xx']}, connection errors {result['connection']}")
    return result


# --------------------------------------------------------------------------- report

def write_section(args, run_label: str, run: Path, meta: dict, n_images: int, results: dict, onnx_info: dict | None,
                  info: dict) -> str:
    rows = []
    for (engine, round_no), r in results.items():
        share = "n/a" if r.get("model_share") is None else f"{100 * r['model_share']:.0f}%"
        rows.append([engine, round_no, r["requests"], fmt(r["rps"], 1), fmt(r["p50_ms"], 0), fmt(r["p99_ms"], 0),
                     r["5xx"], r["connection"], r["timeout"], r["4xx"], fmt(r["mean_batch"], 1), r["largest_batch"],
                     share])
    bullets = [
        f"- command: `{command_line()}`",
        f"- date: {now()}",
        f"- machine: {machine_line(info)}",
        (f"- run: {run_label}; {meta['backbone']} at {meta['resolution']} px, layers {', '.join(meta['layers'])}, "
         f"{len(meta['classes'])} classes; the torch engine runs at the run's inference precision "
         f"({meta.get('inference_precision', meta['precision'])}), ONNX Runtime in fp32 (intra-op threads = torch's, "
         "no spin-waiting), OpenVINO on the uint8 images, normalised inside the graph"),
        (f"- load: {args.clients} concurrent clients (httpx, async, keep-alive), each POSTing one of {n_images} real "
         f"images to `/predict` back to back for {args.seconds:.0f} s per round, after a 3 s warm-up; server: "
         "`serve(run, host='127.0.0.1', engine=...)` in its own process (one uvicorn worker, micro-batching up to "
         "32 images / 2 ms; start-up objects frozen out of the garbage collector); clients and server share the "
         "machine's CPUs"),
        ("- engines run in alternating rounds (torch, onnx, openvino, ..., torch, ...) so that drift in the "
         "shared machine's load hits all of them"),
        ("- latency: from sending the request to the full response, successful requests only; 5xx, connection "
         "errors (refused/reset/dropped) and timeouts are counted separately; model busy: share of the wall time "
         "the server spent inside the engine (so the model, not HTTP or decoding, is the bottleneck when near 100%)"),
    ]
    if onnx_info:
        bullets.append(f"- ONNX export: {onnx_info.get('exporter')}, max abs difference from PyTorch "
                       f"{onnx_info.get('max_abs_diff', float('nan')):.2g} (tolerance {onnx_info.get('tolerance')})")
        ov = onnx_info.get("openvino") or {}
        if ov:
            fp32, bf16 = ov.get("fp32", {}), ov.get("bf16", {})
            bullets.append(
                f"- OpenVINO (runtime only, fed the same model.onnx): fp32 max abs difference from PyTorch "
                f"{fp32.get('max_abs_diff', float('nan')):.2g}; bf16 accuracy check at export on {bf16.get('images')} "
                f"validation images: {bf16.get('accuracy_bf16')} in bf16 against {bf16.get('accuracy_fp32')} in fp32, "
                f"agreement {bf16.get('agreement')} (allowed when at most {bf16.get('max_accuracy_drop')} lower: "
                f"{'passed' if bf16.get('passed') else 'failed'})")
    table = md_table(["engine", "round", "requests ok", "req/s", "p50 ms", "p99 ms", "5xx", "connection errors",
                      "timeouts", "4xx", "mean batch", "largest batch", "model busy"], rows)
    lines = ["## Serving load", "", *bullets, "", table, ""]
    totals: dict[str, tuple[int, float]] = {}
    for (engine, _), r in results.items():
        ok, wall = totals.get(engine, (0, 0.0))
        totals[engine] = (ok + r["requests"], wall + r["wall_s"])
    lines += summary_lines(results, totals, args.clients)
    zero = all(r["5xx"] == 0 and r["connection"] == 0 and r["timeout"] == 0 for r in results.values())
    lines += [""] if lines[-1] else []
    lines.append(f"Target, zero 5xx and zero dropped connections under {args.clients} concurrent clients: "
                 + ("met." if zero else "NOT met."))
    body = "\n".join(lines)
    update_section(SECTION, body)
    return body


P99_TARGET_MS = 150.0


def summary_lines(results: dict, totals: dict, clients: int) -> list[str]:
    """Per engine over all rounds: req/s and its ratio to torch (per round too), worst p99, target verdict."""
    rounds = sorted({n for _, n in results})
    rps = {e: ok / wall for e, (ok, wall) in totals.items() if wall > 0}
    lines = []
    for engine in totals:
        worst = max(results[(engine, n)]["p99_ms"] for n in rounds if (engine, n) in results)
        text = f"- {engine}: {rps.get(engine, 0):.1f} req/s over all rounds, worst p99 {worst:.0f} ms"
        if engine != "torch" and rps.get("torch"):
            per_round = [results[(engine, n)]["rps"] / results[("torch", n)]["rps"]
                         for n in rounds if results.get(("torch", n), {}).get("rps")]
            mixed = per_round and min(per_round) < 1 <= max(per_round)
            text += (f", {rps[engine] / rps['torch']:.2f}x torch's requests/s (per round "
                     f"{', '.join(f'{x:.2f}' for x in per_round)}"
                     + ("; the rounds disagree: within noise)" if mixed else ")"))
        met = worst < P99_TARGET_MS
        lines.append(text + f"; p99 under {P99_TARGET_MS:.0f} ms at {clients} clients in every round: "
                     + ("met" if met else "not met"))
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", help="a finished probe run (default: runs/demo if it exists, else a generated one)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=30.0, help="load duration per engine (default: %(default)s)")
    p.add_argument("--engines", default="torch,onnx,openvino,openvino-bf16",
                   help="comma-separated (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per engine (default: %(default)s)")
    p.add_argument("--images", type=int, default=64, help="distinct images to send (default: %(default)s)")
    p.add_argument("--no-warmup", action="store_true", help="skip the short warm-up before measuring")
    p.add_argument("--no-write", action="store_true", help="print, but leave BENCHMARKS.md alone")
    args = p.parse_args(argv)

    run, run_label = resolve_run(args.run)
    meta = json.loads((run / "model" / "model.json").read_text(encoding="utf-8"))
    images = load_images(run, args.images)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    onnx_info = ensure_onnx(run) if any(e != "torch" for e in engines) else None
    results = {(e, r + 1): run_engine(run, e, images, args.clients, args.seconds, warmup=0 if args.no_warmup else 3)
               for r in range(args.rounds) for e in engines}
    info = machine_info()
    if args.no_write:
        print(json.dumps({f"{e} round {r}": v for (e, r), v in results.items()}, indent=2))
        return
    print(write_section(args, run_label, run, meta, len(images), results, onnx_info, info))


if __name__ == "__main__":
    os.environ.setdefault("TRANSFERLAB_OFFLINE", "1")
    main()
