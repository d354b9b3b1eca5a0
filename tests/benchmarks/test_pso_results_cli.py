"""scripts/pso_results.py: bad arguments and missing runs in one line; its scores on real and
blurred thick digits (the blur the page looks for is visible to them)."""

import subprocess
import sys

import numpy as np
import pytest

from scripts import pso_results
from tests.conftest import ROOT


@pytest.mark.parametrize("num", ["0", "-4", "19"])
def test_bad_arguments_are_one_line(num):
    proc = subprocess.run([sys.executable, "-m", "scripts.pso_results", "--num", num], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "--num must be >= 20" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_runs_are_named(tmp_path, monkeypatch):
    monkeypatch.setattr(pso_results, "RUNS", (("start", "x", str(tmp_path / "gone"), None),))
    with pytest.raises(SystemExit, match=f"missing work directories.*{tmp_path / 'gone'}"):
        pso_results.check_runs()


def test_sharpness_closed_form_and_the_scores_see_blur():
    x = np.zeros((1, 5, 5, 1))
    x[0, 2, 2, 0] = 1.0  # one bright pixel: |lap| = 4 there, 1 at its 4 neighbours, over 9 interior pixels
    assert pso_results.laplacian_sharpness(x) == pytest.approx(8 / 9)
    from diffusion.data.digits import load_digits

    refs = pso_results.references()
    thick, labels = load_digits("train", thick=True)
    real = pso_results.score_images(thick, labels, refs)
    blurred = (thick + np.roll(thick, 1, axis=1) + np.roll(thick, 1, axis=2)) / 3
    soft = pso_results.score_images(blurred, labels, refs)
    assert real["fd_target"] < 3 and real["thick_fraction"] > 0.99 and 0.9 < real["sharpness_ratio"] < 1.1
    assert soft["fd_target"] > 5 * real["fd_target"] and soft["sharpness_ratio"] < 0.7 * real["sharpness_ratio"]
