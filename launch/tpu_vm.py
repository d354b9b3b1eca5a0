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
import shlex
import sys

from launch.shell import Shell, kairos_command, split_command

JAX_TPU = "jax[tpu]==0.10.2"  # the pinned jax, with libtpu
REMOTE_DIR = "kairos"
LOG = "kairos.log"
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


def _where(args) -> list[str]:
    return [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])


def _ssh(args, remote: str, worker: str = "all") -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, *_where(args), f"--worker={worker}",
            f"--command={remote}"]


def commands(args: argparse.Namespace, command: list[str], sh: Shell) -> None:
    """Runs (or prints) the ``gcloud`` commands of one action."""
    tpu = ["gcloud", "compute", "tpus"]
    if args.action == "create" and args.queued:
        sh.run([*tpu, "queued-resources", "create", args.name, f"--node-id={args.name}", *_where(args),
                f"--accelerator-type={args.type}", f"--runtime-version={args.runtime}"]
               + (["--spot"] if args.spot else []))
        sh.run([*tpu, "queued-resources", "describe", args.name, *_where(args), "--format=value(state.state)"])
    elif args.action == "create":
        sh.run([*tpu, "tpu-vm", "create", args.name, *_where(args), f"--accelerator-type={args.type}",
                f"--version={args.runtime}"] + (["--spot"] if args.spot else []))
    elif args.action == "setup":
        venv = (f"cd {REMOTE_DIR} && python3 -m venv .venv && .venv/bin/pip install -e . "
                f"&& .venv/bin/pip install {shlex.quote(JAX_TPU)}")
        if args.repo:
            sh.run(_ssh(args, f"rm -rf {REMOTE_DIR} && git clone {shlex.quote(args.repo)} {REMOTE_DIR} && {venv}"))
        else:
            archive = f"/tmp/{REMOTE_DIR}-{args.name}.tar.gz"
            sh.run(["git", "archive", "--format=tar.gz", "-o", archive, "HEAD"])
            sh.run([*tpu, "tpu-vm", "scp", archive, f"{args.name}:{REMOTE_DIR}.tar.gz", *_where(args), "--worker=all"])
            sh.run(_ssh(args, f"rm -rf {REMOTE_DIR} && mkdir {REMOTE_DIR} && tar -xzf {REMOTE_DIR}.tar.gz "
                              f"-C {REMOTE_DIR} && {venv}"))
    elif args.action == "run":
        argv = kairos_command(command)
        sh.run(_ssh(args, f"cd {REMOTE_DIR} && nohup {shlex.join(argv)} > {LOG} 2>&1 &"))
    elif args.action == "logs":
        sh.run(_ssh(args, f"tail -n 200 -f {REMOTE_DIR}/{LOG}", worker="0"))
    elif args.action == "stop":  # the training loop saves the same step on every worker, then exits
        sh.run(_ssh(args, "pkill -TERM -f 'python -m launch\\.' || true"))
    elif args.action == "delete" and args.queued:
        sh.run([*tpu, "queued-resources", "delete", args.name, *_where(args), "--force", "--quiet"])
    elif args.action == "delete":
        sh.run([*tpu, "tpu-vm", "delete", args.name, *_where(args), "--quiet"])


def main(argv: list[str] | None = None, out=None) -> Shell:
    args, command = parse(sys.argv[1:] if argv is None else argv)
    sh = Shell(args.dry_run, out)
    commands(args, command, sh)
    return sh


if __name__ == "__main__":
    main()
