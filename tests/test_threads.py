"""transferlab.threads: the OpenMP wait policy set before torch loads, and the thread count
chosen from the load, with the user's environment always winning. No timings here: the
effect on speed is measured by benchmarks/threads_load.py."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import types

import pytest

from transferlab import threads
from transferlab.errors import TransferlabError
from transferlab.threads import (
    ThreadDecision,
    apply_thread_policy,
    busy_cpus,
    choose_threads,
    default_wait_policy,
    env_threads,
    load_threads,
    runnable_others,
)


def never_sampled() -> float:
    raise AssertionError("the instantaneous load must not be sampled on a quiet machine")


# --------------------------------------------------------------------------- the pure policy

@pytest.mark.parametrize("cores, busy, default, expected", [
    (2, 0.0, 2, 2),      # quiet
    (2, 0.4, 2, 2),      # a light background task: keep both
    (2, 1.0, 2, 1),      # one CPU taken
    (2, 3.1, 2, 1),      # overloaded: never fewer than one
    (16, 3.0, 16, 13),
    (16, 0.0, 8, 8),     # never more than torch's default (physical cores)
    (2, -1.0, 2, 2),     # nonsense load counts as none
])
def test_choose_threads(cores, busy, default, expected):
    assert choose_threads(cores, busy, default) == expected


@pytest.mark.parametrize("load1, now, expected", [
    (2.0, 0.0, 0.0),  # the load average still counts our own run that just ended
    (0.2, 3.0, 0.2),  # a passing burst the minute's average has not seen
    (3.1, 2.5, 2.5),
])
def test_busy_is_sustained_and_current(load1, now, expected):
    assert busy_cpus(load1, now) == expected


def test_quiet_machine_keeps_the_default_without_sampling():
    decision = load_threads(cores=2, default=2, load1=0.3, sample=never_sampled)
    assert (decision.threads, decision.source, decision.message) == (None, "quiet", None)


def test_busy_machine_uses_fewer_threads_and_says_so():
    decision = load_threads(cores=2, default=2, load1=3.1, sample=lambda: 2.0)
    assert (decision.threads, decision.source) == (1, "load")
    assert decision.message.startswith("load 3.1 on 2 cores: using 1 torch thread ")


def test_load_average_left_by_an_ended_run_does_not_cut_threads():
    decision = load_threads(cores=2, default=2, load1=1.9, sample=lambda: 0.0)
    assert (decision.threads, decision.source, decision.busy) == (None, "quiet", 0.0)


def test_runnable_others_reads_the_kernel_count_minus_ourselves(tmp_path):
    path = tmp_path / "loadavg"
    path.write_text("0.50 0.40 0.30 3/120 4242\n")
    assert runnable_others(samples=3, interval=0.0, path=path) == 2.0
    path.write_text("0.50 0.40 0.30 1/120 4242\n")
    assert runnable_others(samples=2, interval=0.0, path=path) == 0.0


# --------------------------------------------------------------------------- the environment wins

def test_transferlab_threads_wins_over_everything():
    decision = env_threads({"TRANSFERLAB_THREADS": "3", "OMP_NUM_THREADS": "1"})
    assert (decision.threads, decision.source) == (3, "TRANSFERLAB_THREADS")


@pytest.mark.parametrize("name", ["OMP_NUM_THREADS", "MKL_NUM_THREADS"])
@pytest.mark.parametrize("ours", ["", "auto"])
def test_torch_variables_beat_auto_and_are_left_to_torch(name, ours):
    decision = env_threads({name: "2", "TRANSFERLAB_THREADS": ours})
    assert (decision.threads, decision.source) == (None, name)


def test_load_is_consulted_only_with_auto():
    assert env_threads({"TRANSFERLAB_THREADS": " Auto "}) is None
    # Opt-in: the thread count changes torch's numbers, so by default the load must not.
    assert env_threads({"TRANSFERLAB_THREADS": " "}) == ThreadDecision(None, "default")
    assert env_threads({}) == ThreadDecision(None, "default")


@pytest.mark.parametrize("raw", ["0", "-1", "two", "1.5", "2 threads", "\u00b2", "automatic"])
def test_bad_thread_count_is_one_clear_error(raw):
    with pytest.raises(TransferlabError, match="TRANSFERLAB_THREADS") as info:
        env_threads({"TRANSFERLAB_THREADS": raw})
    assert "\n" not in str(info.value) and repr(raw) in str(info.value)


# --------------------------------------------------------------------------- applying it

@pytest.fixture
def fake_torch(monkeypatch):
    """A stand-in for an already imported torch, so the test process keeps its own threads."""
    calls = []
    module = types.SimpleNamespace(set_num_threads=calls.append, get_num_threads=lambda: 2)
    monkeypatch.setitem(sys.modules, "torch", module)
    return calls


def busy_machine(monkeypatch, load1: float, now: float, cores: int = 2) -> None:
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (load1, load1, load1))
    monkeypatch.setattr(threads, "runnable_others", lambda: now)
    monkeypatch.setattr(threads, "usable_cpus", lambda: cores)


def test_auto_under_load_sets_the_threads_and_logs_one_line(monkeypatch, fake_torch):
    busy_machine(monkeypatch, load1=3.1, now=2.0)
    environ, lines = {"TRANSFERLAB_THREADS": "auto"}, []
    decision = apply_thread_policy(log=lines.append, environ=environ)
    assert decision.threads == 1
    assert environ["OMP_NUM_THREADS"] == "1" and fake_torch == [1]
    assert lines == ["load 3.1 on 2 cores: using 1 torch thread (TRANSFERLAB_THREADS=auto)"]


def test_auto_on_a_quiet_machine_changes_nothing(monkeypatch, fake_torch):
    busy_machine(monkeypatch, load1=0.1, now=0.0)
    environ, lines = {"TRANSFERLAB_THREADS": "auto"}, []
    assert apply_thread_policy(log=lines.append, environ=environ).source == "quiet"
    assert (environ, fake_torch, lines) == ({"TRANSFERLAB_THREADS": "auto"}, [], [])


def test_without_auto_the_load_changes_nothing(monkeypatch, fake_torch):
    busy_machine(monkeypatch, load1=5.0, now=4.0)
    environ, lines = {}, []
    assert apply_thread_policy(log=lines.append, environ=environ).source == "default"
    assert (environ, fake_torch, lines) == ({}, [], [])


def test_auto_respects_the_users_omp_num_threads_under_load(monkeypatch, fake_torch):
    busy_machine(monkeypatch, load1=5.0, now=4.0)
    environ, lines = {"OMP_NUM_THREADS": "2", "TRANSFERLAB_THREADS": "auto"}, []
    assert apply_thread_policy(log=lines.append, environ=environ).source == "OMP_NUM_THREADS"
    assert (environ["OMP_NUM_THREADS"], fake_torch, lines) == ("2", [], [])


def test_a_fixed_count_is_applied_without_a_log_line(monkeypatch, fake_torch):
    busy_machine(monkeypatch, load1=0.0, now=0.0)
    environ, lines = {"TRANSFERLAB_THREADS": "2"}, []
    assert apply_thread_policy(log=lines.append, environ=environ).threads == 2
    assert environ["OMP_NUM_THREADS"] == "2" and fake_torch == [2] and lines == []


def test_auto_survives_an_unreadable_proc(monkeypatch, fake_torch, tmp_path):
    garbage = tmp_path / "loadavg"
    garbage.write_text("not a load average")
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (4.0, 4.0, 4.0))
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    monkeypatch.setattr(threads, "runnable_others", functools.partial(runnable_others, path=garbage))
    environ = {"TRANSFERLAB_THREADS": "auto"}
    assert apply_thread_policy(environ=environ) == ThreadDecision(None, "unknown")
    assert environ == {"TRANSFERLAB_THREADS": "auto"} and fake_torch == []


def test_cli_reports_a_bad_thread_count_in_one_line(monkeypatch, capsys):
    from transferlab.cli import main

    monkeypatch.setenv("TRANSFERLAB_THREADS", "many")
    monkeypatch.setattr(sys, "argv", ["transferlab", "--version"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    assert capsys.readouterr().err == ("error: TRANSFERLAB_THREADS must be 'auto' or a whole number of threads, "
                                       "at least 1, not 'many'\n")


def test_cli_applies_the_thread_count_before_the_command(monkeypatch, fake_torch, capsys):
    from transferlab.cli import main

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # restored (removed) after the test
    monkeypatch.setenv("TRANSFERLAB_THREADS", "1")
    monkeypatch.setattr(sys, "argv", ["transferlab", "--version"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code in (0, None) and os.environ["OMP_NUM_THREADS"] == "1" and fake_torch == [1]
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- the wait policy

def test_wait_policy_set_only_when_nobody_chose_and_torch_is_not_loaded(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    environ = {"TRANSFERLAB_WAIT_POLICY": "passive"}
    assert default_wait_policy(environ) and environ["OMP_WAIT_POLICY"] == "PASSIVE"
    for chosen in ({"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "100000"}):
        environ = dict(chosen, TRANSFERLAB_WAIT_POLICY="passive")
        assert not default_wait_policy(environ)
        assert environ == dict(chosen, TRANSFERLAB_WAIT_POLICY="passive")  # the user's setting, untouched
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace())
    environ = {"TRANSFERLAB_WAIT_POLICY": "passive"}
    assert not default_wait_policy(environ) and "OMP_WAIT_POLICY" not in environ


@pytest.mark.parametrize("load, others, expected", [
    (0.2, 5.0, False),  # quiet by the load average: the runnable count is not even read
    (1.8, 0.0, False),  # the load average still counts our previous command; nothing runs now
    (1.8, 1.2, True),  # one of two CPUs taken by others: spinning would fight them
    (6.0, 4.0, True),
])
def test_automatic_wait_policy_follows_the_load(monkeypatch, load, others, expected):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (load, load, load))
    environ = {}
    chosen = default_wait_policy(environ, busy=lambda: others, cores=lambda: 2)
    assert chosen is expected and (environ.get("OMP_WAIT_POLICY") == "PASSIVE") is expected
    environ = {"TRANSFERLAB_WAIT_POLICY": "spin"}
    assert not default_wait_policy(environ, busy=lambda: others, cores=lambda: 2)


def test_a_bad_wait_policy_is_one_line():
    with pytest.raises(TransferlabError, match="TRANSFERLAB_WAIT_POLICY must be one of auto, passive, spin"):
        apply_thread_policy(environ={"TRANSFERLAB_WAIT_POLICY": "sometimes"})


def _libgomp_spin(code: str = "import transferlab, torch", **env: str) -> tuple[str, str]:
    """(OMP_WAIT_POLICY, GOMP_SPINCOUNT) as libgomp itself read them in a fresh process running
    `code` (OMP_DISPLAY_ENV=VERBOSE makes it print its settings when it initialises). The
    spin count is the telling one: libgomp shows an unset policy as 'PASSIVE' too."""
    clean = {k: v for k, v in os.environ.items() if k not in threads.WAIT_ENV + ("OMP_DISPLAY_ENV",)}
    clean.update(env, OMP_DISPLAY_ENV="VERBOSE")
    proc = subprocess.run([sys.executable, "-c", code + "; torch.ones(64, 64).sum()"], env=clean,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    shown = dict(line.strip().split(" = ", 1) for line in proc.stderr.splitlines()
                 if line.strip().startswith(("OMP_WAIT_POLICY =", "GOMP_SPINCOUNT =")))
    assert len(shown) == 2, "libgomp printed no settings (is torch built with another OpenMP runtime?)"
    return shown["OMP_WAIT_POLICY"].strip("'"), shown["GOMP_SPINCOUNT"].strip("'")


def test_fresh_process_importing_transferlab_first_does_not_spin_when_told():
    assert _libgomp_spin(TRANSFERLAB_WAIT_POLICY="passive") == ("PASSIVE", "0")
    _, spin = _libgomp_spin(TRANSFERLAB_WAIT_POLICY="spin")
    assert int(spin) > 0


def test_torch_imported_before_transferlab_keeps_libgomps_spinning():
    # Why the policy lives in transferlab/__init__.py: once torch is loaded it is too late.
    _, spin = _libgomp_spin("import torch, transferlab", TRANSFERLAB_WAIT_POLICY="passive")
    assert int(spin) > 0


@pytest.mark.parametrize("env, expected", [
    ({"OMP_WAIT_POLICY": "ACTIVE"}, ("ACTIVE", "30000000000")),
    ({"GOMP_SPINCOUNT": "1000"}, (None, "1000")),
])
def test_fresh_process_keeps_the_users_wait_settings(env, expected):
    policy, spin = _libgomp_spin(**env)
    assert (policy if expected[0] else None, spin) == expected
