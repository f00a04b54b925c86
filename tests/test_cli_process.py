"""What the `transferlab` command's own process loads: nothing it does not use."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_the_cli_process_keeps_triton_out_and_torch_still_works():
    # torchvision's ops import torch._dynamo, which imports Triton when it is installed (77 MB).
    out = _run("import sys, transferlab.cli, torch, torchvision, timm; "
               "from torch.utils._triton import has_triton_package; "
               "m = timm.create_model('test_resnet', pretrained=False).eval(); "
               "y = m(torch.zeros(1, 3, 32, 32)); "
               "print(sys.modules.get('triton') is None, has_triton_package(), tuple(y.shape))")
    assert out.split(" ", 2)[:2] == ["True", "False"] and out.endswith("(1, 1000)")


def test_a_process_that_imported_torch_first_is_left_alone():
    # A user's script (or this test suite) that imported torch keeps Triton if it is installed.
    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed here")
    out = _run("import torch, transferlab.cli; from torch.utils._triton import has_triton_package; "
               "print(has_triton_package())")
    assert out == "True"


def test_keeping_triton_out_costs_no_warning_on_stderr():
    # torch.utils.flop_counter (imported by the latency estimate) warns "triton not found" on
    # import in a CUDA build of torch; every command printed that line once Triton was kept out.
    done = subprocess.run([sys.executable, "-c", "import transferlab.cli, torch.utils.flop_counter, "
                           "transferlab.insight.latency"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "triton" not in done.stderr.lower(), done.stderr[-2000:]
