"""Commands on finished runs: predict, explain, compare, export, serve, report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from transferlab.cli.app import app, console, err_console
from transferlab.cli.output import PREDICTIONS_HEADER, csv_text
from transferlab.errors import TransferlabError
from transferlab.options import (
    TTA_HELP,
    check_folder,
    check_int,
    check_output_file,
    holds_marker,
    starts_with_line,
    tta_mode,
)


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="A finished run folder.")],
    images: Annotated[list[Path], typer.Argument(help="Image files, or folders (searched recursively).")],
    top_k: Annotated[int, typer.Option(help="How many classes to show per image.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    csv_out: Annotated[Optional[Path], typer.Option("--csv", help="Also write every prediction to this CSV file "
                                                                  "(path, predicted, probability, error, top-k).")] = None,
    tta: Annotated[Optional[str], typer.Option(help=TTA_HELP + " Default: the run's own.")] = None,
):
    """Classify images (files, or folders searched recursively) with a trained run.

    Prints the top-k classes with probabilities; --csv also writes them to a file. Exit code 1
    when some image could not be read (each is listed), 2 when a path does not exist.
    """
    check_int("--top-k", top_k, 1)
    tta = None if tta is None else tta_mode(tta)
    if csv_out is not None:  # before any work: never over an image, a model card or a user's file
        check_output_file(csv_out, "predictions CSV", starts_with_line(PREDICTIONS_HEADER.encode()))
    from transferlab.data.inputs import expand_inputs

    paths = expand_inputs(images)
    from transferlab.inference.predict import load_predictor, predictions_csv

    predictor = load_predictor(run, tta=tta)
    results = predictor.predict_paths(paths, top_k=top_k)
    failed = 0
    for result in results:
        if result.error:
            failed += 1
            err_console.print(f"error: {result.error}", highlight=False, markup=False)
        elif as_json:
            print(json.dumps({"path": str(result.path), "top": [{"class": c, "p": round(p, 5)} for c, p in result.top]}))
        else:
            ranked = "  ".join(f"{c} {p:.3f}" for c, p in result.top)
            console.print(f"{result.path}: {ranked}", highlight=False, markup=False)
    if csv_out is not None:
        from transferlab.atomic import write_text

        write_text(csv_out, csv_text(PREDICTIONS_HEADER.split(","), predictions_csv(results)))
        err_console.print(f"{len(results)} predictions written to {csv_out}", highlight=False, markup=False)
    if failed:
        raise typer.Exit(1)

@app.command()
def explain(
    run: Annotated[Path, typer.Argument(help="A finished run folder (a logistic-regression probe, a fine-tuned "
                                             "run, or an ensemble: each member explained in OUT/m00, m01, ...).")],
    images: Annotated[list[Path], typer.Argument(help="Image files to explain.")],
    method: Annotated[list[str], typer.Option(help="gradcam, gradcam++ or layercam; repeat for several.")] = ["gradcam", "gradcam++"],
    out: Annotated[Optional[Path], typer.Option(help="Folder for the overlays (default RUN/explain).")] = None,
):
    """Class-activation maps: where the model looks for its predicted class; overlays saved as PNG."""
    from transferlab.explain.cam import CAM_METHODS
    from transferlab.explain.run import member_explainers

    unknown = [m for m in method if m not in CAM_METHODS]
    if unknown:
        raise TransferlabError(f"unknown CAM method '{unknown[0]}': choose from {', '.join(CAM_METHODS)}")
    out_dir = out or run / "explain"
    if out_dir.is_symlink():  # RUN/explain of a handed-over run may point at any folder of the user's
        raise TransferlabError(f"{out_dir}: is a link; explain writes only into a real folder (give --out)")
    from transferlab.runs import MEMBER_NAME, check_output_folder

    def own(path: Path) -> bool:  # NNN_<image>_<method>.png, and an ensemble's m00/, m01/, ...
        return (path.is_file() and path.suffix == ".png" and path.name[:3].isdigit()) or (
            path.is_dir() and MEMBER_NAME.fullmatch(path.name) is not None)

    check_output_folder(out_dir, "explain", own)
    if out_dir.resolve() in {p.resolve().parent for p in images}:  # overlays would become images of that class
        raise TransferlabError(f"{out_dir}: is the folder of images being explained; choose another --out")
    failed = 0
    for member, explainer in member_explainers(run):  # an ensemble: each member in its own folder
        label = f"[{member}] " if member else ""
        for result in explainer.explain_paths(images, out_dir / member if member else out_dir, tuple(method)):
            if result.error:
                failed += 1
                err_console.print(f"error: {result.error}", highlight=False, markup=False)
                continue
            files = ", ".join(str(p) for p in result.overlays.values())
            console.print(f"{label}{result.path}: {result.predicted} {result.probability:.3f} -> {files}",
                          highlight=False, markup=False)
    if failed:
        raise typer.Exit(1)

@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run folders to put side by side.")],
    html: Annotated[Path, typer.Option(help="Where to write the sortable HTML table.")] = Path("compare.html"),
):
    """One results table across runs: backbone, method, resolution, time, accuracy, macro F1, per-class F1."""
    from transferlab.insight.compare import COMPARE_MARKERS, compare_runs

    check_output_file(html, "compare page", holds_marker(*COMPARE_MARKERS))
    comparison = compare_runs(runs)
    for warning in comparison.warnings:
        err_console.print(f"warning: {warning}", highlight=False, markup=False)
    typer.echo(comparison.table_text())
    typer.echo(f"html: {comparison.write_html(html)}")

@app.command()
def serve(
    run: Annotated[Path, typer.Argument(help="A finished run folder (probe, fine-tuned or ensemble).")],
    host: Annotated[str, typer.Option(help="Address to bind; 127.0.0.1 keeps it on this machine.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Server processes (each loads the model once).")] = 1,
    engine: Annotated[str, typer.Option(help=(
        "torch; or, after `transferlab export RUN --format onnx`: onnx (ONNX Runtime, fp32), openvino (OpenVINO, "
        "fp32, same answers, faster on most CPUs), openvino-bf16 (fastest where the CPU has bf16; allowed only "
        "when the export measured at most 1 point of validation accuracy lost against fp32)."))] = "torch",
    max_upload_mb: Annotated[float, typer.Option(help="Largest accepted upload, in MB.")] = 10.0,
    top_k: Annotated[int, typer.Option(help="Classes returned per image.")] = 3,
    allowed_host: Annotated[Optional[list[str]], typer.Option(
        "--allowed-host", help="Answer only requests with this Host header (repeatable; *.example.org works). "
                               "Default: any host; see docs/serving.md for the reverse-proxy setup.")] = None,
    max_concurrent_batches: Annotated[int, typer.Option(help="/predict/batch requests processed at once; more get "
                                                             "503 + Retry-After.")] = 2,
    decode_memory_mb: Annotated[float, typer.Option(help="Memory for decoding uploads at once, in MB; an image "
                                                         "needing more gets 413.")] = 1024.0,
    tta: Annotated[Optional[str], typer.Option(help=TTA_HELP + " Default: the run's own; with --engine onnx, "
                                                     "the export must hold the same (export --tta).")] = None,
):
    """Serve a run over HTTP: an upload page at /, POST /predict, /predict/batch, /model, /health, /docs."""
    check_int("--port", port, 1, 65535)
    check_int("--workers", workers, 1, 64)
    check_int("--top-k", top_k, 1)
    if not 0 < max_upload_mb <= 1024:
        raise TransferlabError(f"--max-upload-mb must be above 0 and at most 1024, got {max_upload_mb}")
    check_int("--max-concurrent-batches", max_concurrent_batches, 1, 1024)
    if not 16 <= decode_memory_mb <= 1024 * 1024:
        raise TransferlabError(f"--decode-memory-mb must be between 16 and 1048576, got {decode_memory_mb}")
    from transferlab.serve import serve as serve_run
    from transferlab.serve.engines import check_engine

    tta = None if tta is None else tta_mode(tta)
    check_engine(run, engine, tta)
    console.print(f"serving {run} ({engine}) on http://{host}:{port}/", highlight=False)
    serve_run(run, host=host, port=port, workers=workers, engine=engine,
              max_upload_bytes=int(max_upload_mb * 1024 * 1024), top_k=top_k,
              allowed_hosts=allowed_host or None, max_concurrent_batches=max_concurrent_batches,
              decode_memory_bytes=int(decode_memory_mb * 1024 * 1024), tta=tta)

@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="A finished run folder (probe with a logistic-regression head, "
                                             "fine-tuned, or an ensemble of those).")],
    format: Annotated[str, typer.Option("--format", help="onnx or torchscript.")] = "onnx",
    out: Annotated[Optional[Path], typer.Option(help="Output file (default RUN/model/model.onnx or model.pt).")] = None,
    tolerance: Annotated[float, typer.Option(help="Largest allowed difference from PyTorch's probabilities.")] = 1e-4,
    tta: Annotated[Optional[str], typer.Option(help=TTA_HELP + " Built into the exported graph; default: the "
                                                     "run's own.")] = None,
):
    """Export the whole model (normalised image -> probabilities), checked against PyTorch before it is kept."""
    from transferlab.inference.export import export_run

    tta = None if tta is None else tta_mode(tta)
    path = export_run(run, format, out, tolerance, tta=tta)
    record = json.loads((Path(run) / "model" / "export.json").read_text(encoding="utf-8")).get(format, {})
    console.print(f"{format}: {path} (parity: max abs difference {record.get('max_abs_diff', float('nan')):.2g} "
                  f"<= {tolerance:g})", highlight=False)
    bf16 = record.get("openvino", {}).get("bf16", {})
    if bf16:
        verdict = "allowed" if bf16.get("passed") else "not allowed"
        figures = (f"validation accuracy {bf16['accuracy_bf16']} in bf16 against {bf16['accuracy_fp32']} in fp32, "
                   f"agreement {bf16['agreement']} on {bf16['images']} images" if "images" in bf16 else bf16.get("reason"))
        console.print(f"openvino-bf16 serving {verdict}: {figures}", highlight=False)


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="A finished run folder.")],
):
    """Rebuild report.html from the run folder alone (metrics.json, plots/, skipped.csv, report.json)."""
    check_folder(run, "run folder")
    from transferlab.report.html import render_report
    from transferlab.runs import load_complete_run

    path = render_report(load_complete_run(run).path)
    console.print(f"report: {path}", highlight=False)
