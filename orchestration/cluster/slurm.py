"""The ``sbatch`` script of ``python -m launch.slurm``: one process per GPU on every node,
each running a Kairos command, with a SIGTERM two minutes before the time limit."""

from __future__ import annotations

import argparse
import shlex

from orchestration.cluster.shell import Shell, kairos_command


def batch_script(args: argparse.Namespace, command: list[str]) -> str:
    """The ``sbatch`` script: one task per GPU on every node, each running the command."""
    argv = kairos_command(command)
    lines = ["#!/bin/bash", f"#SBATCH --job-name={args.name}", f"#SBATCH --nodes={args.nodes}",
             f"#SBATCH --ntasks-per-node={args.gpus_per_node}", f"#SBATCH --gpus-per-node={args.gpus_per_node}",
             "#SBATCH --gpus-per-task=1", f"#SBATCH --cpus-per-task={args.cpus_per_gpu}",
             f"#SBATCH --time={args.time}", "#SBATCH --signal=TERM@120", "#SBATCH --output=%x-%j.out"]
    lines += [f"#SBATCH --partition={args.partition}"] if args.partition else []
    lines += [f"#SBATCH --account={args.account}"] if args.account else []
    lines += ["set -euo pipefail", f"cd {shlex.quote(args.repo_dir)}",
              "export HF_HUB_OFFLINE=1",
              "# one process per GPU; jax.distributed.initialize() reads SLURM_* for the coordinator and ids",
              f"srun --kill-on-bad-exit=1 {shlex.join(argv)}", ""]
    return "\n".join(lines)


def submit(args: argparse.Namespace, command: list[str], sh: Shell) -> None:
    """Writes the script to ``args.script`` and submits it (``args``: the launcher's flags)."""
    sh.write(args.script, batch_script(args, command))
    sh.run(["sbatch", args.script])
