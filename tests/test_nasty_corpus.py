"""`doctor`, `probe`, `predict` and `serve` on a corpus of nasty files (tests/nasty_corpus.py).

Whatever the files, no command may crash: exit code 0 or 2 (1 for `predict` when some of
the images it was given failed: that is its documented partial failure), no traceback.
Every bad file is listed with a reason; every good file is still classified.
"""

from __future__ import annotations

import csv
import json
import os
import re
import struct
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tests.conftest import make_image_folder
from tests.nasty_corpus import BOMB_SIDE, EMPTY_CLASS, KINDS, Corpus, Entry, build_corpus
from transferlab.cli import app
from transferlab.errors import TransferlabError
from transferlab.pipelines.probe import ProbeConfig, run_probe
from transferlab.serve import create_app

FAST = ["--backbone", "test_resnet", "--resolution", "64", "--quiet", "--workers", "0", "--precision", "fp32",
        "--cache-dir", ""]
SUBPROCESS_TIMEOUT_S = 120  # a guard against a hang, not a timing assertion


# --- running the commands ---------------------------------------------------------------------

@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    crash: str = ""  # the traceback of an exception that escaped the command, if any

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def problems(self, allowed: tuple[int, ...] = (0, 2)) -> str:
        """Why this outcome is a crash, or "" when it is not."""
        if self.crash:
            return f"exception escaped the command:\n{self.crash}"
        if "Traceback" in self.output:
            return f"traceback in the output:\n{self.output[-3000:]}"
        if self.code not in allowed:
            return f"exit code {self.code} (allowed {allowed}):\n{self.output[-3000:]}"
        return ""


def invoke(*args) -> Outcome:
    """The CLI in-process, as `main()` runs it: TransferlabError is a one-line error and exit 2."""
    result = CliRunner().invoke(app, [os.fspath(a) for a in args])
    exc = result.exception
    if isinstance(exc, TransferlabError):
        return Outcome(2, "", f"error: {exc}\n")
    crash = ""
    if exc is not None and not isinstance(exc, SystemExit):
        crash = "".join(traceback.format_exception(*result.exc_info))
    return Outcome(result.exit_code, result.stdout, result.stderr, crash)


def run_module(*args, cwd: Path) -> Outcome:
    """`python -m transferlab ...` for real exit codes and stderr. Its streams are strict UTF-8, as
    in an ordinary en_US.UTF-8 terminal (under the C locale Python would escape bad bytes itself)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUTF8"}
    env.update(PYTHONIOENCODING="utf-8:strict", HF_HUB_OFFLINE="1", TRANSFERLAB_OFFLINE="1",
               TRANSFERLAB_CACHE=str(cwd / "cache"))
    done = subprocess.run([sys.executable, "-m", "transferlab", *map(os.fspath, args)], cwd=cwd, env=env,
                          capture_output=True, timeout=SUBPROCESS_TIMEOUT_S)
    return Outcome(done.returncode, done.stdout.decode("utf-8", "surrogateescape"),
                   done.stderr.decode("utf-8", "surrogateescape"))


# --- matching reported names with the corpus ---------------------------------------------------

def spellings(name: str) -> set[str]:
    """Ways a report may spell `name`: exactly, or with a non-UTF-8 byte escaped or replaced."""
    raw = os.fsencode(name)
    return {name, name.encode("utf-8", "backslashreplace").decode("utf-8"),
            raw.decode("utf-8", "backslashreplace"), raw.decode("utf-8", "replace")}


def rel(corpus: Corpus, path: Path) -> str:
    return path.relative_to(corpus.root).as_posix()


def find(reported: dict[str, str], corpus: Corpus, entry: Entry) -> str | None:
    """The reason reported for `entry` (keys: paths relative to the corpus root), or None."""
    for spelling in spellings(rel(corpus, entry.path)):
        if spelling in reported:
            return reported[spelling]
    return None


def relative_key(corpus: Corpus, reported_path: str) -> str:
    prefix = str(corpus.root) + "/"
    return reported_path[len(prefix):] if reported_path.startswith(prefix) else reported_path


def reason_problem(entry: Entry, reason: str | None) -> str:
    if reason is None:
        return "not listed"
    if not reason.strip():
        return "listed without a reason"
    if entry.reason and not re.search(entry.reason, reason, re.IGNORECASE):
        return f"reason {reason!r} does not say /{entry.reason}/"
    return ""


def fail_listing(problems: dict[str, str], what: str) -> None:
    if problems:
        pytest.fail(f"{what}:\n" + "\n".join(f"  {kind}: {why}" for kind, why in sorted(problems.items())))


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def offline_one_thread(tmp_path_factory):
    """Offline, a private feature cache, one torch thread (the tiny model on a shared 2-core
    machine is many times slower with two threads spinning), for the module-scoped runs too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFERLAB_OFFLINE", "1")
        mp.setenv("TRANSFERLAB_CACHE", str(tmp_path_factory.mktemp("nasty-cache")))
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    return build_corpus(tmp_path_factory.mktemp("nasty") / "data")


@pytest.fixture(scope="module")
def doctor_json(corpus) -> tuple[Outcome, dict | None]:
    outcome = invoke("doctor", corpus.root, "--json")
    report = None if outcome.problems(allowed=(0,)) else json.loads(outcome.stdout)
    return outcome, report


@pytest.fixture(scope="module")
def doctor_report(doctor_json) -> dict:
    outcome, report = doctor_json
    if report is None:
        pytest.fail(f"doctor --json gave no report: {outcome.problems(allowed=(0,)) or outcome.output[-2000:]}")
    return report


@pytest.fixture(scope="module")
def probe_run(corpus, tmp_path_factory) -> tuple[Outcome, Path]:
    out = tmp_path_factory.mktemp("nasty-run") / "run"
    return invoke("probe", corpus.root, "--out", out, *FAST), out


@pytest.fixture(scope="module")
def complete_probe(probe_run) -> Path:
    outcome, out = probe_run
    problem = outcome.problems(allowed=(0,))
    if problem or not (out / "run.json").is_file():
        pytest.fail(f"probe on the corpus did not complete: {problem or outcome.output[-2000:]}")
    return out


@pytest.fixture(scope="module")
def skipped(corpus, complete_probe) -> dict[str, str]:
    """skipped.csv as {path relative to the corpus root: reason}."""
    with open(complete_probe / "skipped.csv", newline="", encoding="utf-8", errors="surrogateescape") as handle:
        return {relative_key(corpus, row["path"]): row["reason"] for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def split_names(complete_probe) -> set[str]:
    split = json.loads((complete_probe / "split.json").read_text(encoding="utf-8", errors="surrogateescape"))
    return {Path(name).as_posix() for name, _ in split["train"] + split["val"]}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> Path:
    """A probe run on plain generated images: predict and serve are tested on the corpus files
    with a model that does not depend on the corpus probe having worked."""
    root = tmp_path_factory.mktemp("clean")
    run_probe(ProbeConfig(data=str(make_image_folder(root / "data")), out=str(root / "run"), backbone="test_resnet",
                          resolution=64, workers=0, progress=False, precision="fp32", cache_dir="", error_grid=0,
                          embed=""))
    return root / "run"


@pytest.fixture(scope="module")
def client(clean_run):
    with TestClient(create_app(clean_run)) as test_client:
        yield test_client


def entries_where(corpus: Corpus, decodes: bool | None) -> list[Entry]:
    return [e for e in corpus.entries if e.decodes is decodes]


# --- the corpus itself ------------------------------------------------------------------------

def test_corpus_has_every_kind_and_a_small_bomb(corpus):
    assert len(corpus.kinds()) >= 30
    for entry in corpus.entries:
        assert os.path.lexists(entry.path), entry.kind
    assert corpus.loop.is_symlink() and corpus.loop.resolve() == corpus.loop.parent.resolve()
    assert corpus.empty_classes[0] == EMPTY_CLASS and not list((corpus.root / EMPTY_CLASS).iterdir())
    bomb = next(e.path for e in corpus.entries if e.kind == "decompression-bomb-30000px").read_bytes()
    assert struct.unpack(">II", bomb[16:24]) == (BOMB_SIDE, BOMB_SIDE)  # IHDR width, height
    assert len(bomb) < 200_000  # 900 megapixels declared, a hundred kilobytes on disk


# --- doctor -----------------------------------------------------------------------------------

def test_doctor_json_exits_cleanly(doctor_json):
    outcome, _ = doctor_json
    assert not outcome.problems(allowed=(0,)), outcome.problems(allowed=(0,))


def test_doctor_human_report_exits_cleanly(corpus, tmp_path):
    """As a user sees it: a real process whose stdout is strict UTF-8 (file names are not)."""
    outcome = run_module("doctor", corpus.root, cwd=tmp_path)
    assert not outcome.problems(allowed=(0,)), outcome.problems(allowed=(0,))
    assert "unreadable or non-image file" in outcome.stdout


def test_doctor_lists_every_bad_file_with_a_reason(corpus, doctor_report):
    unreadable = {item["path"]: item["reason"] for item in doctor_report["unreadable"]}
    problems = {e.kind: reason_problem(e, find(unreadable, corpus, e)) for e in corpus.role("bad")}
    fail_listing({k: v for k, v in problems.items() if v}, "bad files the doctor does not list properly")


def test_doctor_counts_every_good_file(corpus, doctor_report):
    unreadable = {item["path"]: item["reason"] for item in doctor_report["unreadable"]}
    problems = {e.kind: f"reported unreadable: {find(unreadable, corpus, e)}"
                for e in corpus.role("good") if find(unreadable, corpus, e) is not None}
    fail_listing(problems, "good files the doctor calls unreadable")
    odd_ok = [e for e in corpus.role("odd") if find(unreadable, corpus, e) is None]
    expected = len(corpus.base_images) + len(corpus.role("good")) + len(odd_ok)
    assert sum(doctor_report["counts"].values()) == expected, doctor_report["counts"]


def test_doctor_lists_hidden_files_apart(corpus, doctor_report):
    unreadable = {item["path"]: item["reason"] for item in doctor_report["unreadable"]}
    hidden = doctor_report["hidden"]
    problems = {}
    for entry in corpus.role("hidden"):
        name = rel(corpus, entry.path)
        if find(unreadable, corpus, entry) is not None:
            problems[entry.kind] = "reported as unreadable"
        elif not any(name == h or name.startswith(h + "/") for h in hidden):
            problems[entry.kind] = f"not in the hidden list {hidden}"
    fail_listing(problems, "hidden files mishandled by the doctor")


def test_doctor_finds_the_duplicate(corpus, doctor_report):
    duplicate = next(e for e in corpus.entries if e.kind == "byte-identical-duplicate")
    groups = [set(group) for group in doctor_report["duplicate_groups"]]
    assert {rel(corpus, duplicate.path), "circle/img (0).jpg"} in groups, groups


def test_doctor_warns_about_classes_without_images(corpus, doctor_report):
    for name in corpus.empty_classes:
        assert any(name in warning for warning in doctor_report["warnings"]), (name, doctor_report["warnings"])


def test_doctor_lists_the_symlink_loop_without_following_it(corpus, doctor_report):
    loop = rel(corpus, corpus.loop)
    reported = [item["path"] for item in doctor_report["unreadable"]] + doctor_report["hidden"]
    followed = [p for p in reported if p.startswith(loop + "/")]
    assert not followed, f"files reached through the loop: {followed}"
    assert loop in reported, f"{loop!r} (a directory symlink to its own folder) is listed nowhere"


def test_top_level_symlink_loop_is_not_a_class(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=2)
    (root / "loop").symlink_to(".", target_is_directory=True)
    outcome = invoke("doctor", root, "--json")
    assert not outcome.problems(allowed=(0,)), outcome.problems(allowed=(0,))
    report = json.loads(outcome.stdout)
    assert "loop" not in report["classes"], "a link back to the data folder became a class holding every image"
    assert sum(report["counts"].values()) == 6


# --- probe ------------------------------------------------------------------------------------

def test_probe_completes(probe_run):
    outcome, out = probe_run
    assert not outcome.problems(allowed=(0,)), outcome.problems(allowed=(0,))
    assert json.loads((out / "run.json").read_text())["status"] == "complete"


def test_probe_lists_every_bad_file_with_a_reason(corpus, skipped):
    problems = {e.kind: reason_problem(e, find(skipped, corpus, e)) for e in corpus.role("bad")}
    fail_listing({k: v for k, v in problems.items() if v}, "bad files skipped.csv does not list properly")


def test_probe_classifies_every_good_file(corpus, complete_probe, skipped, split_names):
    problems = {}
    for entry in corpus.role("good"):
        if find(skipped, corpus, entry) is not None:
            problems[entry.kind] = f"skipped: {find(skipped, corpus, entry)}"
        elif not spellings(rel(corpus, entry.path)) & split_names:
            problems[entry.kind] = "in neither train nor val of split.json"
    fail_listing(problems, "good files the probe did not use")
    for entry in corpus.role("odd"):  # degenerate: used, or skipped with a reason
        used = bool(spellings(rel(corpus, entry.path)) & split_names) and find(skipped, corpus, entry) is None
        assert used or reason_problem(entry, find(skipped, corpus, entry)) == "", entry.kind
    used = {name for name in split_names if not spellings(name) & set(skipped)}
    images = json.loads((complete_probe / "metrics.json").read_text())["summary"]["images"]
    assert images["train"] + images["val"] == len(used), (images, sorted(used))
    base = {rel(corpus, p) for p in corpus.base_images}
    assert base <= used, sorted(base - used)


def test_probe_ignores_hidden_files_and_the_loop(corpus, skipped, split_names):
    loop = rel(corpus, corpus.loop)
    through_loop = sorted(n for n in split_names | set(skipped) if n.startswith(loop + "/"))
    assert not through_loop, f"files reached through the symlink loop: {through_loop}"
    problems = {}
    for entry in corpus.role("hidden"):
        names = spellings(rel(corpus, entry.path))
        if names & split_names:
            problems[entry.kind] = "used as a training/validation image"
        elif names & set(skipped):
            problems[entry.kind] = "listed in skipped.csv as if it were data"
    fail_listing(problems, "hidden files mishandled by the probe")


def test_probe_warns_about_classes_without_images(corpus, complete_probe):
    warnings = json.loads((complete_probe / "metrics.json").read_text())["warnings"]
    for name in corpus.empty_classes:
        assert any(name in warning for warning in warnings), (name, warnings)


# --- predict ----------------------------------------------------------------------------------

def predicted_paths(outcome: Outcome) -> dict[str, list]:
    rows = [json.loads(line) for line in outcome.stdout.splitlines() if line.startswith("{")]
    return {row["path"]: row["top"] for row in rows}


def error_lines(outcome: Outcome) -> list[str]:
    return [line for line in outcome.stderr.splitlines() if line.startswith("error:")]


def named_in(path: Path, lines: list[str]) -> bool:
    return any(spelling in line for spelling in spellings(str(path)) for line in lines)


def existing_files(entries: list[Entry]) -> list[Entry]:
    return [e for e in entries if e.path.is_file()]


def test_predict_classifies_every_decodable_file(corpus, clean_run):
    entries = existing_files(entries_where(corpus, True))
    outcome = invoke("predict", clean_run, *(e.path for e in entries), "--json", "--top-k", "2")
    assert not outcome.problems(allowed=(0,)), outcome.problems(allowed=(0,))
    top = predicted_paths(outcome)
    missing = {e.kind: "no prediction" for e in entries if not spellings(str(e.path)) & set(top)}
    fail_listing(missing, "decodable files predict did not classify")
    assert all(len(t) == 2 and t[0]["class"] in {"circle", "square", "dome(inner)"} for t in top.values()), top


def test_predict_names_every_undecodable_file(corpus, clean_run):
    entries = existing_files(entries_where(corpus, False))
    outcome = invoke("predict", clean_run, *(e.path for e in entries), "--json")
    # Exit 1 is predict's documented "some images could not be read"; a crash is not.
    assert not outcome.problems(allowed=(1,)), outcome.problems(allowed=(1,))
    errors = error_lines(outcome)
    unnamed = {e.kind: "no one-line error naming it" for e in entries if not named_in(e.path, errors)}
    fail_listing(unnamed, f"files predict failed on without saying so (stderr: {outcome.stderr[-3000:]})")
    assert len(errors) == len(entries), errors
    assert not predicted_paths(outcome), "an undecodable file got a prediction"


def test_predict_degenerate_files_do_not_crash(corpus, clean_run):
    entries = existing_files(entries_where(corpus, None))
    outcome = invoke("predict", clean_run, *(e.path for e in entries), "--json")
    assert not outcome.problems(allowed=(0, 1)), outcome.problems(allowed=(0, 1))
    top, errors = predicted_paths(outcome), error_lines(outcome)
    silent = {e.kind: "neither predicted nor reported" for e in entries
              if not spellings(str(e.path)) & set(top) and not named_in(e.path, errors)}
    fail_listing(silent, "files predict passed over silently")


@pytest.mark.parametrize("make", [
    lambda corpus, tmp: tmp / "nowhere.jpg",
    lambda corpus, tmp: next(e.path for e in corpus.entries if e.kind == "dangling-symlink"),
    lambda corpus, tmp: corpus.root / corpus.empty_classes[0],
], ids=["missing-path", "dangling-symlink", "empty-folder"])
def test_predict_unusable_argument_is_one_line(corpus, clean_run, tmp_path, make):
    path = make(corpus, tmp_path)
    outcome = invoke("predict", clean_run, path)
    assert not outcome.problems(allowed=(2,)), outcome.problems(allowed=(2,))
    assert outcome.stderr.count("\n") == 1 and str(path) in outcome.stderr, outcome.stderr


def test_predict_on_the_corpus_folder(corpus, clean_run):
    """A folder argument: every image below it predicted or named, litter left out."""
    outcome = invoke("predict", clean_run, corpus.root, "--json")
    assert not outcome.problems(allowed=(1,)), outcome.problems(allowed=(1,))
    top, errors = predicted_paths(outcome), error_lines(outcome)
    problems = {}
    for entry in corpus.entries:
        predicted = bool(spellings(str(entry.path)) & set(top))
        named = named_in(entry.path, errors)
        if entry.role == "hidden" or entry.path.suffix.lower() in (".txt", ".csv"):
            if predicted or named:
                problems[entry.kind] = "litter or a non-image file was treated as an image"
        elif entry.decodes is True and not predicted:
            problems[entry.kind] = "no prediction"
        elif entry.decodes is not True and not (predicted or named):
            problems[entry.kind] = "neither predicted nor named in an error line"
    fail_listing(problems, "predict on the corpus folder")
    loop = str(corpus.loop) + "/"
    assert not [p for p in top if p.startswith(loop)], "predict followed the symlink loop"


def test_predict_as_a_process_on_a_mix(corpus, clean_run, tmp_path):
    """Real argv and strict UTF-8 streams (non-UTF-8 names), real exit code, the human output:
    each good file printed, each failed one on one `error:` line."""
    good = [e for e in corpus.role("good") if e.decodes][:6] + [
        e for e in corpus.entries if e.kind in ("non-utf8-name", "newline-in-name", "emoji-name")]
    bad = [e for e in corpus.entries if e.kind in ("truncated-jpeg", "zero-byte-file", "decompression-bomb-30000px",
                                                   "html-saved-as-png", "txt-file", "non-utf8-name-broken")]
    outcome = run_module("predict", clean_run, *(e.path for e in good + bad), cwd=tmp_path)
    assert not outcome.problems(allowed=(1,)), outcome.problems(allowed=(1,))
    errors = error_lines(outcome)
    missing = {e.kind: "not in stdout" for e in good if not any(s in outcome.stdout for s in spellings(str(e.path)))}
    missing.update({e.kind: "no one-line error naming it" for e in bad if not named_in(e.path, errors)})
    fail_listing(missing, f"predict (process) on a mix of good and bad files (stderr: {outcome.stderr[-3000:]})")
    assert len(errors) == len(bad), outcome.stderr


# --- serve ------------------------------------------------------------------------------------

def upload_name(path: Path) -> str:
    """What a browser sends for this file: its name, undecodable bytes replaced."""
    return os.fsencode(path.name).decode("utf-8", "replace")


def sent_name(name: str) -> str:
    """The file name as the multipart header carries it (WHATWG HTML form encoding, which
    browsers and httpx apply): quotes and control characters percent-encoded."""
    encoded = name.replace("\\", "\\\\").replace('"', "%22")
    return "".join(f"%{ord(c):02X}" if ord(c) < 0x20 and c != "\x1b" else c for c in encoded)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("kind", list(KINDS))
def test_serve_answers_each_upload(corpus, client, kind):
    entry = next((e for e in corpus.entries if e.kind == kind), None)
    if entry is None or not (entry.path.is_file() and os.access(entry.path, os.R_OK)):
        pytest.skip(f"{kind}: no bytes a client could upload on this machine")
    name = upload_name(entry.path)
    response = client.post("/predict", files={"file": (name, entry.path.read_bytes(), "application/octet-stream")})
    assert response.status_code != 500, response.text
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    if entry.decodes is True:
        assert response.status_code == 200, response.text
    elif entry.decodes is False:
        assert 400 <= response.status_code < 500 and body["error"].strip(), response.text
    if response.status_code == 200:
        assert body["filename"] == sent_name(name) and len(body["top"]) == 3
        assert abs(sum(item["p"] for item in body["top"]) - 1) < 1e-4
    else:
        assert 400 <= response.status_code < 500 and body["error"].strip(), response.text


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_serve_batch_answers_every_file_and_keeps_serving(corpus, client):
    entries = [e for e in corpus.entries if e.path.is_file() and os.access(e.path, os.R_OK)]
    for start in range(0, len(entries), 16):  # the default per-request file limit
        chunk = entries[start : start + 16]
        files = [("files", (upload_name(e.path), e.path.read_bytes(), "application/octet-stream")) for e in chunk]
        response = client.post("/predict/batch", files=files)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [r["filename"] for r in results] == [sent_name(upload_name(e.path)) for e in chunk]
        wrong = {e.kind: r for e, r in zip(chunk, results)
                 if (e.decodes is True and "top" not in r)
                 or (e.decodes is False and not (400 <= r.get("status", 0) < 500 and r.get("error")))}
        fail_listing({k: str(v) for k, v in wrong.items()}, "batch results that do not fit the file")
    assert client.get("/health").json()["status"] == "ok"
