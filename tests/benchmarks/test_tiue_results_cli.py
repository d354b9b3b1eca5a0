"""scripts/tiue_results.py refuses bad arguments and missing or mismatched runs in one line."""

import json
import subprocess
import sys

import pytest

from scripts import tiue_results
from tests.conftest import ROOT


@pytest.mark.parametrize("args", [["--num", "0"], ["--num", "-3"], ["--repeats", "0"], ["--time_batch", "-1"],
                                  ["--similarity_num", "0"]])
def test_bad_arguments_are_one_line(args):
    proc = subprocess.run([sys.executable, "-m", "scripts.tiue_results", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "must be >= " in proc.stderr and "Traceback" not in proc.stderr


def test_missing_and_mismatched_runs_are_named(tmp_path, monkeypatch):
    run = tmp_path / "tiue"
    monkeypatch.setattr(tiue_results, "ENTRIES", (("tiue", "x", str(run), None, "solver=ddim;steps=4"),))
    monkeypatch.setattr(tiue_results, "TIUE_RUNS", (str(run),))
    with pytest.raises(SystemExit, match=f"missing work directories.*{run}"):
        tiue_results.check_runs()
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"distill": {"guidance": 1.0}}))
    with pytest.raises(SystemExit, match="distilled with guidance 1.0"):
        tiue_results.check_runs()
