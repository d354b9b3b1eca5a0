"""Cloud TPU VMs: create a slice, set up every worker, run a Kairos command on all of them,
tail the logs, stop the run, delete the slice. Every step is a ``gcloud`` command printed
before it runs; ``--dry_run`` only prints them.

    python -m launch.tpu_vm create --name kairos --zone us-central2-b --type v4-32 [--spot | --queued]
    python -m launch.tpu_vm setup  --name kairos --zone us-central2-b [--repo URL]
    python -m launch.tpu_vm run    --name kairos --zone us-central2-b -- train --config configs/cifar10.py \\
        --workdir /mnt/runs/cifar10
    python -m launch.tpu_vm logs   --name kairos --zone us-central2-b
    python -m launch.tpu_vm stop   --name kairos --zone us-central2-b   # SIGTERM: every worker saves, exits
    python -m launch.tpu_vm delete --name kairos --zone us-central2-b [--queued]

``setup`` copies this checkout (``git archive`` of HEAD) to every worker, or clones
``--repo``, and builds the README's virtualenv plus ``jax[tpu]``. The work directory must
be one path every worker sees (a Filestore mount, or a bucket mounted with gcsfuse at the
same place on each worker): process 0 writes the logs and reports, all write checkpoints.
The project comes from ``gcloud config`` (or ``--project``); nothing is embedded here.
"""

from __future__ import annotations

import argparse
import sys

from orchestration.cluster.shell import Shell, split_command
from orchestration.cluster.tpu_vm import commands

ACTIONS = ("create", "setup", "run", "logs", "stop", "delete")


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    argv, command = split_command(argv)
    p = argparse.ArgumentParser(prog="python -m launch.tpu_vm", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=ACTIONS)
    p.add_argument("--name", required=True, help="the TPU VM (node) name")
    p.add_argument("--zone", required=True)
    p.add_argument("--project", default=None, help="default: gcloud's configured project")
    p.add_argument("--type", default="v4-8", help="accelerator type, e.g. v4-32, v5litepod-16, v6e-16")
    p.add_argument("--runtime", default="tpu-ubuntu2204-base", help="TPU VM software version")
    p.add_argument("--spot", action="store_true", help="spot capacity (preemptible: Kairos resumes on rerun)")
    p.add_argument("--queued", action="store_true", help="create/delete through a queued resource")
    p.add_argument("--repo", default=None, help="setup: git clone this URL instead of copying this checkout")
    p.add_argument("--dry_run", action="store_true", help="print every command, run none")
    args = p.parse_args(argv)
    if args.action == "run" and not command:
        p.error("run needs the Kairos command after `--`, e.g. `-- train --config configs/cifar10.py --workdir W`")
    if command and args.action != "run":
        p.error(f"only `run` takes a command after `--` (got {args.action})")
    return args, command


def main(argv: list[str] | None = None, out=None) -> Shell:
    args, command = parse(sys.argv[1:] if argv is None else argv)
    sh = Shell(args.dry_run, out)
    commands(args, command, sh)
    return sh


if __name__ == "__main__":
    main()
