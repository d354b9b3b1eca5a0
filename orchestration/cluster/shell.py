"""Running (or, with ``dry_run``, only printing) the shell commands of the cluster launchers
(``launch.tpu_vm``, ``launch.gke``, ``launch.slurm``).

Every command is printed as ``+ <command>`` before it runs, so a dry run shows exactly
what a real one would do. Nothing here holds a project, an account or a credential:
``gcloud``, ``kubectl`` and ``sbatch`` use whatever the user has configured.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from typing import Sequence


class Shell:
    """Prints and runs commands; ``dry_run`` only prints them."""

    def __init__(self, dry_run: bool, out=None):
        self.dry_run = dry_run
        self.out = out or sys.stdout
        self.printed: list[str] = []

    def run(self, argv: Sequence[str]) -> int:
        """Runs ``argv`` (no shell); returns its exit status (0 in a dry run). A failing
        command stops the launcher with its status and the command in one line."""
        line = shlex.join(argv)
        self.printed.append(line)
        print(f"+ {line}", file=self.out, flush=True)
        if self.dry_run:
            return 0
        try:
            status = subprocess.call(list(argv))
        except FileNotFoundError:
            raise SystemExit(f"error: `{argv[0]}` was not found on PATH (install it, or use --dry_run to see "
                             "the commands)") from None
        if status:
            raise SystemExit(f"error: `{line}` exited with status {status}")
        return status

    def write(self, path: str, text: str) -> None:
        """Writes a generated file (a manifest, a batch script); a dry run prints it instead."""
        print(f"+ cat > {shlex.quote(path)} <<'EOF'\n{text.rstrip()}\nEOF", file=self.out, flush=True)
        if not self.dry_run:
            with open(path, "w") as f:
                f.write(text)


def kairos_command(argv: Sequence[str]) -> list[str]:
    """The Kairos command a launcher runs on every worker: ``launch.<name> ARGS --multihost``
    (``jax.distributed.initialize()`` finds the other workers from the TPU or SLURM
    environment), checked: a command that is not one of Kairos' entry points is refused
    before anything runs."""
    entry = {"train", "distill", "sample", "evaluate"}
    if not argv or argv[0] not in entry:
        raise SystemExit(f"error: the command to run must start with one of {sorted(entry)} "
                         f"(e.g. `-- train --config configs/cifar10.py --workdir /mnt/runs/c10`), got {list(argv)}")
    return [".venv/bin/python", "-m", f"launch.{argv[0]}", *argv[1:], "--multihost"]


def split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """``(launcher flags, the Kairos command after "--")``."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []
