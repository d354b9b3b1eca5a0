"""The ``gcloud`` commands of ``python -m launch.tpu_vm``'s actions on a Cloud TPU VM slice:
create (spot or queued), set up every worker (this checkout by ``git archive``, or a clone,
plus the README's virtualenv and ``jax[tpu]``), run a Kairos command on all workers, tail
process 0's log, stop (SIGTERM), delete."""

from __future__ import annotations

import argparse
import shlex

from orchestration.cluster.shell import Shell, kairos_command

JAX_TPU = "jax[tpu]==0.10.2"  # the pinned jax, with libtpu


REMOTE_DIR = "kairos"


LOG = "kairos.log"


def _where(args) -> list[str]:
    return [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])


def _ssh(args, remote: str, worker: str = "all") -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, *_where(args), f"--worker={worker}",
            f"--command={remote}"]


def commands(args: argparse.Namespace, command: list[str], sh: Shell) -> None:
    """Runs (or prints) the ``gcloud`` commands of ``args.action`` (``args``: the launcher's
    parsed flags; ``command``: the Kairos command after ``--``)."""
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
