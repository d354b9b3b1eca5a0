"""scripts/video_results.py refuses bad arguments in one line, before reading any run."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize("args, match", [
    (["--num", "0"], "--num must be >= 2"), (["--num", "-5"], "--num must be >= 2"),
    (["--p0", "/nonexistent/run", "--only", "p0"], "/nonexistent/run"),
])
def test_bad_arguments_are_one_line(args, match):
    proc = subprocess.run([sys.executable, "-m", "scripts.video_results", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and match in proc.stderr and "Traceback" not in proc.stderr
