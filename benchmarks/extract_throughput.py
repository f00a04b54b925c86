#!/usr/bin/env python3
"""Feature-extraction throughput of transferlab against the plain reference, in one run.

On the first N images of the folder in sorted class/file order (the order torchvision's
ImageFolder uses, which is what /work/shared/bench/plain_extract.py --limit N takes):

- plain: /work/shared/bench/plain_extract.py FOLDER --res R --limit N, as a subprocess
  (eager fp32, NCHW, ImageFolder, batch 64, 1 worker); run first, in the middle and last,
  and the ratio uses the mean of those runs;
- transferlab `extract_features` (multi-layer pooled features, no cache) in fp32 and bf16,
  each with 0 and 1 DataLoader workers;
- ONNX Runtime: the same FeatureExtractor forward (normalisation, forward_intermediates,
  pooling, concatenation) exported with torch.onnx.export (dynamic batch) and run with
  onnxruntime (intra-op threads 2), on the same preprocessing (transferlab.features.extract
  .preprocess in a DataLoader with 0 and 1 workers);
- eager fp32/bf16 in the very same loop as ONNX (no hashing, no cache bookkeeping), so
  ONNX Runtime is compared with eager like for like;
- "gain from choosing the resolution": plain at the backbone's native 224 px against
  transferlab with every default (auto resolution, auto precision, default workers, the
  probe's default engine, its export and compile counted).

Reports img/s, the ratio to plain, and for bf16 and ONNX the max abs difference and cosine
similarity of the features against fp32 eager. Replaces its section of BENCHMARKS.md.

Then the engines (section extract_engines; alone with --engines-only): for each backbone@px
of --engine-configs, each engine of --engine-variants (torch bf16, OpenVINO bf16, ONNX Runtime
fp32 on the same exported PooledFeatures, intra-op threads = torch's) runs `extract_with` on the
probe's split of the folder (all of it, or about --limit images stratified), each in a process of
its own so that its peak RSS is its own; img/s, the ratio to torch bf16 in the same round, and
the probe's validation accuracy (logreg) on each engine's features, with the predictions'
agreement and the features' cosine against torch bf16.

    .venv/bin/python benchmarks/extract_throughput.py --res 128 --limit 2048
    .venv/bin/python benchmarks/extract_throughput.py --engines-only
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported where it is used: `--help` stays quick
    import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import (DATA_DEFAULT, PLAIN_EXTRACT, command_line, fmt, machine_info, machine_line, md_table,
                         now, update_section)
else:
    from ._common import (DATA_DEFAULT, PLAIN_EXTRACT, command_line, fmt, machine_info, machine_line, md_table,
                          now, update_section)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- runners

def run_plain(folder: str, arch: str, res: int, limit: int) -> dict:
    cmd = [sys.executable, PLAIN_EXTRACT, folder, "--arch", arch, "--res", str(res), "--limit", str(limit)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"plain_extract failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("{")][-1]
    out = json.loads(line)
    return {"img_per_s": float(out["img_per_s"]), "seconds": float(out["seconds"]), "images": int(out["images"]),
            "process_wall_s": round(wall, 2)}


def run_transferlab(backbone, paths: list[Path], res: int, precision: str, workers: int | None,
                    batch_size: int, engine: str = "torch") -> tuple[dict, "np.ndarray"]:
    from transferlab.features.extract import ExtractionSettings, extract_with, make_extractor

    kwargs = dict(resolution=res, precision=precision, batch_size=batch_size, engine=engine)
    if workers is not None:
        kwargs["workers"] = workers
    t0 = time.perf_counter()  # an OpenVINO engine's export and compile are counted: a probe pays them
    extractor = make_extractor(backbone, ExtractionSettings(**kwargs))
    settings = extractor.settings  # what ran
    result = extract_with(extractor, paths, cache_root=None, progress=False)
    secs = time.perf_counter() - t0
    if result.failures:
        log(f"  {len(result.failures)} failures, e.g. {result.failures[:2]}")
    n = len(result.ok_indices)
    return {"img_per_s": n / secs, "seconds": secs, "images": n, "unique_extracted": result.n_extracted,
            "library_img_per_s": result.images_per_second, "workers": settings.workers,
            "precision": settings.precision, "engine": settings.engine}, result.features


class _Preprocessed:
    """Dataset of transferlab's own preprocessing: uint8 (3, R, R) per path."""

    def __init__(self, paths, res, interpolation):
        self.paths, self.res, self.interpolation = paths, res, interpolation

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from transferlab.data.transforms import preprocess

        return preprocess(self.paths[i], self.res, self.interpolation)


def _loader(paths, res, interpolation, workers, batch_size):
    from torch.utils.data import DataLoader

    return DataLoader(_Preprocessed(paths, res, interpolation), batch_size=batch_size, num_workers=workers)


def export_onnx(backbone, res: int, path: Path) -> dict:
    """Export FeatureExtractor's forward (normalise, intermediates, pool, concat) with a dynamic batch."""
    import torch

    from transferlab.features.extract import ExtractionSettings, FeatureExtractor
    from transferlab.features.layers import pool

    extractor = FeatureExtractor(backbone, ExtractionSettings(resolution=res, precision="fp32"))

    # The library's own nn.Module for the pooled multi-layer features (FeatureExtractor.network,
    # transferlab.features.extract.PooledFeatures); older versions only had _forward_maps.
    network = getattr(extractor, "network", None)

    class Exported(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.network = network
            # the same constants as transferlab's normalisation (uint8 scale)
            self.register_buffer("mean", torch.tensor(backbone.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
            self.register_buffer("std", torch.tensor(backbone.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

        def forward(self, images):  # float32 (B, 3, R, R) in 0..255, as FeatureExtractor gets them
            x = (images - self.mean) / self.std
            if self.network is not None:
                return self.network(x)
            maps = extractor._forward_maps(x)
            return torch.cat([pool(m, extractor.settings.pool) for m in maps], dim=1)

    module = Exported().eval()
    example = torch.rand(2, 3, res, res) * 255
    t0 = time.perf_counter()
    kwargs = dict(input_names=["images"], output_names=["features"],
                  dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}}, opset_version=17)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # The TorchScript exporter needs no onnxscript (not installed here) and handles timm's code.
            torch.onnx.export(module, (example,), str(path), dynamo=False, **kwargs)
            exporter = "torch.onnx.export(dynamo=False), opset 17"
        except TypeError:
            torch.onnx.export(module, (example,), str(path), **kwargs)
            exporter = "torch.onnx.export, opset 17"
    return {"exporter": exporter, "export_s": round(time.perf_counter() - t0, 2),
            "size_mb": round(path.stat().st_size / 1e6, 1)}


def onnx_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session, paths, res, interpolation, workers, batch_size) -> tuple[dict, "np.ndarray"]:
    import numpy as np

    rows = []
    t0 = time.perf_counter()
    for batch in _loader(paths, res, interpolation, workers, batch_size):
        rows.append(session.run(None, {"images": batch.float().numpy()})[0])
    secs = time.perf_counter() - t0
    feats = np.concatenate(rows)
    return {"img_per_s": len(feats) / secs, "seconds": secs, "images": len(feats), "workers": workers}, feats


def run_eager_loop(backbone, paths, res, precision, workers, batch_size) -> tuple[dict, "np.ndarray"]:
    """FeatureExtractor called in the same loop as ONNX: the network plus decoding, nothing else."""
    import numpy as np

    from transferlab.features.extract import ExtractionSettings, FeatureExtractor

    extractor = FeatureExtractor(backbone, ExtractionSettings(resolution=res, precision=precision))
    rows = []
    t0 = time.perf_counter()
    for batch in _loader(paths, res, backbone.interpolation, workers, batch_size):
        rows.append(extractor(batch))
    secs = time.perf_counter() - t0
    feats = np.concatenate(rows)
    return {"img_per_s": len(feats) / secs, "seconds": secs, "images": len(feats), "workers": workers}, feats


def feature_diff(reference, other) -> dict:
    import numpy as np

    ref = np.asarray(reference, dtype=np.float64)
    oth = np.asarray(other, dtype=np.float64)
    cos = (ref * oth).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(oth, axis=1) + 1e-12)
    abs_diff = np.abs(ref - oth)
    return {"max_abs": float(abs_diff.max()), "max_abs_rel": float(abs_diff.max() / np.abs(ref).max()),
            "mean_abs": float(abs_diff.mean()), "min_cos": float(cos.min()), "mean_cos": float(cos.mean())}


# --------------------------------------------------------------------------- main flow

def first_n_paths(folder: str, limit: int) -> tuple[list[Path], bool]:
    """First `limit` images in sorted class/file order, and whether ImageFolder agrees."""
    from torchvision import datasets

    from transferlab.data.folder import scan_folder

    paths = [s.path for s in scan_folder(folder).samples][:limit]
    image_folder = [Path(p) for p, _ in datasets.ImageFolder(folder).samples][:limit]
    return paths, [str(p) for p in paths] == [str(p) for p in image_folder]


def run(args) -> dict:
    import torch

    from transferlab.backbones import create_backbone
    from transferlab.features.extract import default_engine
    from transferlab.features.resolution import choose_resolution

    res, limit, bs = args.res, args.limit or 2048, args.batch_size
    arch = args.backbone.replace("tf_efficientnet_", "")
    paths, same_as_imagefolder = first_n_paths(args.data, limit)
    log(f"{len(paths)} images; same files as ImageFolder's first {limit}: {same_as_imagefolder}")
    backbone = create_backbone(args.backbone)
    auto_res, auto_reason = choose_resolution(paths, backbone.native_size)
    native = backbone.native_size
    log(f"auto resolution: {auto_res} ({auto_reason}); native {native}; torch threads {torch.get_num_threads()}")

    rounds: list[dict[str, dict]] = []
    feats: dict[str, object] = {}
    onnx_info = None
    tmp = Path(tempfile.mkdtemp(prefix="tl-onnx-"))
    onnx_path = tmp / f"{args.backbone}-{res}.onnx"

    def timed(label, fn):
        log(f"{label} ...")
        cpu0 = _cpu_seconds()
        row, f = fn()
        cpu = _cpu_seconds() - cpu0
        row["cores_used"] = cpu / row.get("process_wall_s", row["seconds"])
        row["img_per_cpu_s"] = row["images"] / cpu if cpu > 0 else float("nan")
        rounds[-1][label] = row
        if f is not None and label not in feats:
            feats[label] = f
        log(f"  {row}")

    def plain(label, r):
        timed(label, lambda: (run_plain(args.data, arch, r, limit), None))

    def tl(label, precision, workers, r=res, engine="torch"):
        timed(label, lambda: run_transferlab(backbone, paths, r, precision, workers, bs, engine))

    def onnx(label, workers):
        timed(label, lambda: run_onnx(session, paths, res, backbone.interpolation, workers, bs))

    def eager(label, precision, workers):
        timed(label, lambda: run_eager_loop(backbone, paths, res, precision, workers, bs))

    session = None
    if not args.skip_onnx:
        onnx_info = export_onnx(backbone, res, onnx_path)
        session = onnx_session(onnx_path, args.ort_threads)
        session.run(None, {"images": torch.zeros(1, 3, res, res).numpy()})  # build the session's kernels now
        log(f"ONNX export: {onnx_info}")

    auto_label = f"transferlab defaults @ auto {auto_res}"
    native_label = f"plain @ native {native}"
    for k in range(args.rounds):
        log(f"--- round {k + 1} of {args.rounds}")
        rounds.append({})
        # Order: plain first, in the middle and last; each variant once per round.
        plain("plain #1", res)
        tl("transferlab fp32, workers 0", "fp32", 0)
        tl("transferlab bf16, workers 0", "bf16", 0)
        if session is not None:
            onnx("ONNX Runtime fp32, workers 0", 0)
            eager("eager loop fp32, workers 0", "fp32", 0)
            eager("eager loop bf16, workers 0", "bf16", 0)
        plain("plain #2", res)
        tl("transferlab fp32, workers 1", "fp32", 1)
        tl("transferlab bf16, workers 1", "bf16", 1)
        if session is not None:
            onnx("ONNX Runtime fp32, workers 1", 1)
        plain(native_label, native)
        tl(auto_label, "bf16" if _auto_bf16() else "fp32", None, r=auto_res, engine=default_engine())
        plain("plain #3", res)

    # Per round: ratio to that round's mean plain at `res`; then the median over rounds.
    rows: dict[str, dict] = {}
    plain_means = []
    for rnd in rounds:
        plain_means.append(statistics.mean(v["img_per_s"] for k, v in rnd.items() if k.startswith("plain #")))
    for label in rounds[0]:
        values = [rnd[label]["img_per_s"] for rnd in rounds]
        if label == auto_label:
            ratios = [rnd[label]["img_per_s"] / rnd[native_label]["img_per_s"] for rnd in rounds]
        elif label == native_label:
            ratios = [None for _ in rounds]
        else:
            ratios = [rnd[label]["img_per_s"] / m for rnd, m in zip(rounds, plain_means)]
        rows[label] = {
            **rounds[0][label],
            "img_per_s": statistics.median(values),
            "all_img_per_s": [round(v, 1) for v in values],
            "ratio": None if ratios[0] is None else statistics.median(ratios),
            "cores_used": statistics.median(rnd[label]["cores_used"] for rnd in rounds),
            "img_per_cpu_s": statistics.median(rnd[label]["img_per_cpu_s"] for rnd in rounds),
        }
    plain_runs = [rnd[k]["img_per_s"] for rnd in rounds for k in rnd if k.startswith("plain #")]
    plain_mean = statistics.mean(plain_runs)
    ref = feats["transferlab fp32, workers 0"]
    diffs = {k: feature_diff(ref, v) for k, v in feats.items()
             if k != "transferlab fp32, workers 0" and getattr(v, "shape", None) == ref.shape}
    report = {
        "date": now(), "command": command_line(args.argv, __file__), "machine": machine_info(),
        "res": res, "limit": limit, "n": len(paths), "same_as_imagefolder": same_as_imagefolder,
        "auto_res": auto_res, "auto_reason": auto_reason, "native": native, "rows": rows, "diffs": diffs,
        "plain_mean": plain_mean, "plain_spread": [min(plain_runs), max(plain_runs)], "onnx": onnx_info,
        "feature_dim": int(ref.shape[1]), "rounds": args.rounds, "raw": rounds,
    }
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    if not args.no_write:
        update_section(f"extract_throughput:{args.backbone}@{res}", markdown(report, args))
        log("BENCHMARKS.md updated")
    return report


# --------------------------------------------------------------------------- engines

ENGINE_VARIANTS = ("torch-bf16", "openvino-bf16", "onnxruntime-fp32", "torch-fp32", "openvino-fp32")


class OrtExtractor:
    """ONNX Runtime on the PooledFeatures that OpenVINO compiles (same export, same normalisation
    function), with FeatureExtractor's surface so that `extract_with` runs it in the same loop."""

    def __init__(self, torch_extractor, threads: int):
        import onnxruntime as ort

        from transferlab.features.openvino_extract import export_onnx_bytes

        self.backbone, self.settings = torch_extractor.backbone, torch_extractor.settings
        self.name, self.interpolation = torch_extractor.name, torch_extractor.interpolation
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        data = export_onnx_bytes(torch_extractor.network, self.settings.resolution, self.name)
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])

    def cache_key(self) -> dict:
        return {"engine": "onnxruntime"}  # never used: the benchmark runs without a cache

    def __call__(self, images):
        from transferlab.data.transforms import normalise

        x = normalise(images, self.backbone.mean, self.backbone.std).numpy()
        return self.session.run(None, {"images": x})[0]


def engine_cell(spec: dict) -> dict:
    """One engine on one backbone and size, in this (fresh) process: setup, one warm-up batch, then
    `extract_with` over the paths, timed; the features go to spec["features"] (.npy)."""
    import resource
    from dataclasses import replace

    import numpy as np
    import torch

    from transferlab.backbones import create_backbone
    from transferlab.features.extract import ExtractionSettings, FeatureExtractor, extract_with, make_extractor
    from transferlab.features.resolution import resolve_resolution

    engine, precision = spec["variant"].split("-")
    paths = [Path(p) for p in json.loads(Path(spec["paths"]).read_text())]
    backbone = create_backbone(spec["backbone"])
    res, _ = resolve_resolution(spec["res"], paths, backbone.native_size)
    settings = ExtractionSettings(resolution=res, precision=precision, batch_size=spec["batch_size"], workers=0)
    t0 = time.perf_counter()
    if engine == "onnxruntime":
        extractor, ran = OrtExtractor(FeatureExtractor(backbone, settings), torch.get_num_threads()), "onnxruntime fp32"
    else:
        extractor = make_extractor(backbone, replace(settings, engine=engine))
        ran = f"{extractor.settings.engine} {extractor.settings.precision}"
    setup_s = time.perf_counter() - t0
    extractor(torch.zeros(spec["batch_size"], 3, res, res, dtype=torch.uint8))  # first-call allocations
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    result = extract_with(extractor, paths, None, progress=False)
    secs, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    np.save(spec["features"], result.features)
    return {"res": res, "ran": ran, "setup_s": setup_s, "seconds": secs, "images": len(result.ok_indices),
            "img_per_s": len(result.ok_indices) / secs, "cores_used": cpu / secs, "ok_indices": result.ok_indices,
            "threads": torch.get_num_threads(),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _run_cell(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--engine-cell", json.dumps(spec)], capture_output=True, text=True,
                          check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or [f"rc {proc.returncode}"])[-1][:200]}
    return json.loads(lines[-1])


def _probe_split(args):
    """The probe's stratified 80/20 split (seed 0) of the folder, or of about --limit images of it."""
    import math

    from transferlab.data.folder import scan_folder
    from transferlab.data.layout import prepare_data

    per_class = math.ceil(args.limit / len(scan_folder(args.data).classes)) if args.limit else None
    split = prepare_data(args.data, None, 0.2, 0, per_class).split
    return split.train, split.val


def _probe_scores(features, ok_indices, labels, n_train: int):
    """Validation accuracy of the probe's default classifier (logreg) on these features, and its predictions."""
    import numpy as np

    from transferlab.classifiers.heads import build_classifier

    ok = np.asarray(ok_indices)
    y = np.asarray(labels)[ok]
    train = ok < n_train
    classifier = build_classifier("logreg", 0, labels=y[train])
    classifier.fit(features[train], y[train])
    predicted = classifier.predict(features[~train])
    return float((predicted == y[~train]).mean()), predicted


def _engine_rows(cells: dict[str, list[dict]], feats: dict, labels, n_train: int) -> dict[str, dict]:
    """Per variant: medians over rounds, the ratio to torch bf16 in each round, accuracy and agreement."""
    import numpy as np

    ref = "torch-bf16" if "error" not in cells.get("torch-bf16", [{"error": ""}])[0] else None
    rows, scores = {}, {v: _probe_scores(feats[v], cells[v][0]["ok_indices"], labels, n_train) for v in feats}
    for variant, runs in cells.items():
        if "error" in runs[0]:
            rows[variant] = {"error": runs[0]["error"]}
            continue
        ratios = [r["img_per_s"] / t["img_per_s"] for r, t in zip(runs, cells[ref])] if ref else []
        row = {k: runs[0][k] for k in ("res", "ran", "setup_s", "images", "threads")}
        row |= {"img_per_s": statistics.median(r["img_per_s"] for r in runs),
                "all_img_per_s": [round(r["img_per_s"], 1) for r in runs],
                "ratio": statistics.median(ratios) if ratios else None,
                "cores_used": statistics.median(r["cores_used"] for r in runs),
                "peak_rss_mib": max(r["peak_rss_mib"] for r in runs), "val_accuracy": scores[variant][0]}
        if ref and variant != ref:
            row["agreement"] = float(np.mean(scores[variant][1] == scores[ref][1]))
            row["diff"] = feature_diff(feats[ref], feats[variant])
        rows[variant] = row
    return rows


def run_engines(args) -> dict:
    import numpy as np

    train, val = _probe_split(args)
    samples = train + val
    labels = [s.label for s in samples]
    tmp = Path(tempfile.mkdtemp(prefix="tl-engines-"))
    (tmp / "paths.json").write_text(json.dumps([str(s.path) for s in samples]))
    log(f"engines: {len(train)} training + {len(val)} validation images; variants {args.engine_variants}")
    configs = {}
    for config in args.engine_configs.split(","):
        backbone, _, res = config.partition("@")
        cells: dict[str, list[dict]] = {}
        feats = {}
        for round_ in range(args.rounds):
            for variant in args.engine_variants.split(","):
                out = tmp / f"{backbone}-{res}-{variant}.npy"
                spec = {"variant": variant, "backbone": backbone, "res": None if res == "auto" else
                        (res if res == "native" else int(res)), "batch_size": args.batch_size,
                        "paths": str(tmp / "paths.json"), "features": str(out)}
                log(f"{config} {variant} (round {round_ + 1}) ...")
                cell = _run_cell(spec)
                log(f"  {({k: v for k, v in cell.items() if k != 'ok_indices'})}")
                cells.setdefault(variant, []).append(cell)
                if "error" not in cell and variant not in feats:
                    feats[variant] = np.load(out)
        configs[config] = _engine_rows(cells, feats, labels, len(train))
    shutil.rmtree(tmp, ignore_errors=True)  # the paths list and the features (.npy), read already
    report = {"date": now(), "command": command_line(args.argv, __file__), "machine": machine_info(),
              "train": len(train), "val": len(val), "rounds": args.rounds, "configs": configs}
    print("\n" + engines_markdown(report, args))
    if args.json:
        Path(args.json).with_suffix(".engines.json").write_text(json.dumps(report, indent=1, default=str))
    if not args.no_write:
        update_section("extract_engines", engines_markdown(report, args))
        log("BENCHMARKS.md updated (extract_engines)")
    return report


ENGINE_HEADERS = ["backbone @ px", "engine", "ran", "img/s", "ratio to torch bf16", "setup s", "peak RSS MiB",
                  "cores used", "probe val acc", "agreement with torch bf16", "min / mean cosine vs torch bf16"]


def engine_table_rows(report: dict) -> list[list]:
    rows = []
    for config, variants in report["configs"].items():
        for variant, r in variants.items():
            if "error" in r:
                rows.append([config, variant, f"failed: {r['error']}"] + [""] * (len(ENGINE_HEADERS) - 3))
                continue
            d = r.get("diff")
            rows.append([f"{config.split('@')[0]} @ {r['res']}", variant, r["ran"], fmt(r["img_per_s"]),
                         "-" if r["ratio"] is None else f"{r['ratio']:.2f}x", fmt(r["setup_s"]),
                         f"{r['peak_rss_mib']:.0f}", f"{r['cores_used']:.2f}", f"{r['val_accuracy']:.4f}",
                         f"{r['agreement']:.4f}" if "agreement" in r else "-",
                         f"{d['min_cos']:.5f} / {d['mean_cos']:.6f}" if d else "-"])
    return rows


def engines_markdown(report: dict, args) -> str:
    return "\n".join([
        f"## Extraction engines: torch, OpenVINO, ONNX Runtime ({report['train']} + {report['val']} images)",
        "",
        f"- command: `{report['command']}`",
        f"- date: {report['date']}",
        f"- machine: {machine_line(report['machine'])}",
        (f"- images: the probe's stratified 80/20 split (seed 0) of `{args.data}`"
         + (f", about {args.limit} images of it" if args.limit else "") + "; no feature cache"),
        (f"- each cell: `extract_with` (file hashing and decoding included, workers 0, batch {args.batch_size}, "
         "layers stage-2,head) in a fresh process after the engine's setup (setup s: torch model -> ONNX export -> "
         "compile, not in img/s) and one warm-up batch; peak RSS = that process's ru_maxrss (Python, torch and the "
         "model included); ratio = img/s over torch bf16's in the same round, median over "
         f"{report['rounds']} round(s)"),
        ("- probe val acc: the probe's default classifier (logreg) fitted on each engine's training features, "
         "accuracy on the validation images; agreement: share of validation predictions equal to torch bf16's"),
        "",
        md_table(ENGINE_HEADERS, engine_table_rows(report)),
    ])


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its reaped children (workers, subprocesses)."""
    import resource

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def _auto_bf16() -> bool:
    from transferlab.precision import resolve_precision

    return resolve_precision("auto") == "bf16"


HEADERS = ["run", "img/s", "ratio to plain", "cores used", "img per CPU-s", "max abs diff vs fp32", "min / mean cosine vs fp32",
           "notes"]


def table_rows(report: dict) -> list[list]:
    rows = []
    for name, r in report["rows"].items():
        d = report["diffs"].get(name)
        notes = []
        if report["rounds"] > 1:
            notes.append("per round: " + ", ".join(fmt(v) for v in r["all_img_per_s"]))
        if name.startswith("transferlab") and "unique_extracted" in r and r["unique_extracted"] != r["images"]:
            notes.append(f"{r['unique_extracted']} unique files extracted")
        if "defaults" in name:
            notes.append(f"workers {r['workers']}, {r['precision']}, {r.get('engine', 'torch')} (setup included)")
        if name.startswith("plain"):
            notes.append(f"process wall {r['process_wall_s']:.1f} s (start-up + model load included)")
        if name.startswith("eager loop"):
            notes.append("same loop as ONNX Runtime (no hashing/cache bookkeeping)")
        if r["ratio"] is None:
            ratio = "-"
        elif "defaults" in name:
            ratio = f"**{r['ratio']:.2f}x vs plain @ native**"
        else:
            ratio = f"{r['ratio']:.2f}x"
        rows.append([
            name, fmt(r["img_per_s"]), ratio, f"{r['cores_used']:.2f}", fmt(r["img_per_cpu_s"]),
            f"{d['max_abs']:.3g} ({d['max_abs_rel']:.2%} of max)" if d else "",
            f"{d['min_cos']:.5f} / {d['mean_cos']:.6f}" if d else "",
            "; ".join(notes),
        ])
    return rows


def print_report(report: dict) -> None:
    print()
    print(md_table(HEADERS, table_rows(report)))
    print(f"\nplain @ {report['res']}: mean {report['plain_mean']:.1f} img/s over "
          f"{3 * report['rounds']} runs, spread {report['plain_spread']}")
    if report["onnx"]:
        print(f"ONNX: {report['onnx']}")


def markdown(report: dict, args) -> str:
    gain_plain = report["rows"][f"plain @ native {report['native']}"]["img_per_s"]
    gain_row = next(v for k, v in report["rows"].items() if "defaults" in k)
    gain_tl, gain_ratio = gain_row["img_per_s"], gain_row["ratio"]
    lines = [
        f"## Feature-extraction throughput ({args.backbone}, {report['res']} px, {report['n']} images)",
        "",
        f"- command: `{report['command']}`",
        f"- date: {report['date']}",
        f"- machine: {machine_line(report['machine'])}",
        f"- images: the first {report['n']} files of `{args.data}` in sorted class/file order "
        f"(identical to ImageFolder's first {report['limit']}: {report['same_as_imagefolder']}); no feature cache",
        f"- plain = `{PLAIN_EXTRACT}` (eager fp32 NCHW, ImageFolder, batch 64, 1 worker, final pooled "
        f"features only); ratio = img/s over the mean of the same round's three plain runs at {report['res']} px, "
        f"median over {report['rounds']} round(s); plain at {report['res']} px averaged {report['plain_mean']:.1f} img/s "
        f"(spread {report['plain_spread'][0]:.1f}-{report['plain_spread'][1]:.1f}); img/s columns are medians over rounds",
        "- cores used = CPU seconds (this process + reaped children: DataLoader workers, the plain subprocess) / "
        "wall seconds; 2.0 is the whole machine, less means other work on the shared machine took the rest "
        "(plain: over its whole process, start-up included); img per CPU-s = images / those CPU seconds, "
        "less sensitive to the load than img/s (plain's is understated by its start-up)",
        f"- transferlab = `extract_features` (layers stage-2,head, {report['feature_dim']} dims, channels-last, "
        f"file hashing included), batch {args.batch_size}; img/s = images / wall time of the call; the torch "
        "engine except in the defaults row, which runs the probe's default engine (see extract_engines)",
    ]
    if report["onnx"]:
        o = report["onnx"]
        lines.append(f"- ONNX Runtime: {o['exporter']} of FeatureExtractor's forward (normalise + "
                     f"forward_intermediates + pool + concat), dynamic batch, {o['size_mb']} MB, "
                     f"CPUExecutionProvider, intra-op threads {args.ort_threads}, ORT_ENABLE_ALL; "
                     f"export {o['export_s']} s (not counted)")
    cores = [r["cores_used"] for r in report["rows"].values()]
    lines += ["- feature differences are against transferlab fp32 (workers 0) on the same images"]
    if min(cores) < 1.5:
        lines.append(
            f"- **caution**: this run got {min(cores):.2f}-{max(cores):.2f} of the 2 cores (other jobs were running "
            "on the shared machine), so absolute img/s are low and ratios carry the noise of changing load; "
            "per-round figures show the spread")
    lines += [
        "",
        md_table(HEADERS, table_rows(report)),
        "",
        f"Gain from choosing the resolution: plain at native {report['native']} px runs at {gain_plain:.1f} img/s; "
        f"transferlab with its defaults picks {report['auto_res']} px ({report['auto_reason']}) and runs at "
        f"{gain_tl:.1f} img/s: **{gain_ratio:.2f}x** (median over rounds of the per-round ratio).",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--data", default=DATA_DEFAULT, help="class-per-folder image tree (default: %(default)s)")
    p.add_argument("--res", type=int, default=128, help="resolution for the comparison (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None,
                   help="throughput: the first N images (default 2048); engines: about N images of the probe's "
                        "split, stratified (default: all)")
    p.add_argument("--backbone", default="tf_efficientnet_lite0",
                   choices=["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--ort-threads", type=int, default=2, help="ONNX Runtime intra-op threads (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the whole sequence; report medians over rounds (default: %(default)s)")
    p.add_argument("--skip-onnx", action="store_true", help="leave out the ONNX Runtime variant")
    p.add_argument("--json", default=str(Path(tempfile.gettempdir()) / "transferlab-extract-throughput.json"),
                   help="also dump the raw report here (default: %(default)s)")
    p.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    p.add_argument("--engines-only", action="store_true", help="run only the engine comparison")
    p.add_argument("--skip-engines", action="store_true", help="leave out the engine comparison")
    p.add_argument("--engine-configs", default="tf_efficientnet_lite0@128,tf_efficientnet_lite0@224,"
                   "tf_efficientnet_lite1@native",
                   help="backbone@px (px: a number, native or auto) (default: %(default)s)")
    p.add_argument("--engine-variants", default="torch-bf16,openvino-bf16,onnxruntime-fp32",
                   help=f"engine-precision from {', '.join(ENGINE_VARIANTS)}; torch-bf16 is the reference "
                        "(default: %(default)s)")
    p.add_argument("--engine-cell", help=argparse.SUPPRESS)  # internal: one cell, in its own process
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.engine_cell:
        print(json.dumps(engine_cell(json.loads(args.engine_cell))), flush=True)
        return 0
    for variant in args.engine_variants.split(","):
        if variant not in ENGINE_VARIANTS:
            raise SystemExit(f"--engine-variants: unknown {variant!r}; choose from {', '.join(ENGINE_VARIANTS)}")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if not args.engines_only:
        run(args)
    if not args.skip_engines:
        run_engines(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
