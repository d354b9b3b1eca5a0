"""SLURM GPU clusters: writes an ``sbatch`` script that runs a Kairos command as one process
per GPU on every node, and submits it (``--dry_run``: print the script and the command).

    python -m launch.slurm --nodes 2 --gpus_per_node 8 --time 04:00:00 --script runs/c10.sbatch \\
        -- train --config configs/cifar10.py --workdir /shared/runs/cifar10

Each task sees one GPU (``CUDA_VISIBLE_DEVICES`` from ``--gpus-per-task=1``);
``jax.distributed.initialize()`` (``--multihost``) reads the process count, the process id
and the coordinator (the first node of ``SLURM_JOB_NODELIST``) from SLURM's environment.
``--signal=TERM@120`` asks SLURM for a SIGTERM two minutes before the time limit: every
process saves the same step and exits, and resubmitting the script resumes it. The work
directory must be on a filesystem every node sees. ``--partition`` / ``--account`` are
passed through when given; nothing is embedded.
"""

from __future__ import annotations

import argparse
import re
import sys

from orchestration.cluster.shell import Shell, split_command
from orchestration.cluster.slurm import submit


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    argv, command = split_command(argv)
    p = argparse.ArgumentParser(prog="python -m launch.slurm", description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default="kairos", help="the job name")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus_per_node", type=int, default=8)
    p.add_argument("--cpus_per_gpu", type=int, default=8)
    p.add_argument("--time", default="04:00:00", help="the job's time limit, HH:MM:SS")
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--repo_dir", default=".", help="the Kairos checkout (with its .venv) on the shared filesystem")
    p.add_argument("--script", default="kairos.sbatch", help="where to write the batch script")
    p.add_argument("--dry_run", action="store_true", help="print the script and the sbatch command, run nothing")
    args = p.parse_args(argv)
    if not command:
        p.error("give the Kairos command after `--`, e.g. `-- train --config configs/cifar10.py --workdir W`")
    if args.nodes < 1 or args.gpus_per_node < 1 or args.cpus_per_gpu < 1:
        p.error(f"--nodes, --gpus_per_node and --cpus_per_gpu must be >= 1, got {args.nodes}, "
                f"{args.gpus_per_node}, {args.cpus_per_gpu}")
    if not re.fullmatch(r"(\d+-)?\d{1,2}:\d{2}:\d{2}", args.time):
        p.error(f"--time must look like HH:MM:SS or D-HH:MM:SS, got {args.time!r}")
    return args, command


def main(argv: list[str] | None = None, out=None) -> Shell:
    args, command = parse(sys.argv[1:] if argv is None else argv)
    sh = Shell(args.dry_run, out)
    submit(args, command, sh)
    return sh


if __name__ == "__main__":
    main()
