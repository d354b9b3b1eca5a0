"""``--help`` of every command lists every flag the command accepts (``--helpfull`` adds only
absl's own), with the choices the code has (every time grid)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sampling.grids import GRIDS
from tests.launch.test_cli import ROOT, _env

COMMANDS = ("launch.train", "launch.distill", "launch.sample", "launch.evaluate", "launch.phast", "launch.memory",
            "launch.import_weights")


def help_flags(module: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "tests.launch.cli_probe", module, "--help_flags"], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize("module", COMMANDS)
def test_help_lists_every_flag_the_command_accepts(module):
    found = help_flags(module)
    missing = sorted(set(found["defined"]) - set(found["help"]))
    assert not missing, f"python -m {module} --help does not list {missing}"
    if "grid" in found["help"]:
        assert all(grid in found["help"]["grid"] for grid in GRIDS), found["help"]["grid"]
