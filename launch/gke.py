"""GKE: a JobSet manifest that runs a Kairos command on every host of one or several TPU
slices, and ``kubectl apply`` of it (``--dry_run``: print the manifest and the command).

    python -m launch.gke --name c10 --image REGISTRY/kairos:TAG --type v5litepod-16 [--slices 2] \\
        --manifest c10.yaml -- train --config configs/cifar10.py --workdir /mnt/runs/cifar10

Several slices (multislice, over the data-center network) get one replicated job per
slice and the ``MEGASCALE_*`` settings libtpu reads: the coordinator (the first pod of
slice 0), the slice count and each pod's slice index (its job's index). Keep
``mesh.fsdp`` within a slice's chips so that only the ``data`` axis crosses slices.

The image must hold a Kairos checkout at ``/kairos`` with its ``.venv`` (the README's set-up
plus ``jax[tpu]``); the work directory must be a volume every host mounts (``--volume
CLAIM:/mnt``, a ReadWriteMany persistent volume claim, e.g. Filestore or a GCS FUSE CSI
volume). ``jax.distributed.initialize()`` (``--multihost``) finds the slice's hosts from
the TPU environment GKE sets. The manifest is JSON, which is YAML: ``kubectl`` reads it as
either. No project, cluster or credential is embedded.
"""

from __future__ import annotations

import argparse
import sys

from orchestration.cluster.gke import SLICES, apply
from orchestration.cluster.shell import Shell, split_command


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    argv, command = split_command(argv)
    p = argparse.ArgumentParser(prog="python -m launch.gke", description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, help="the JobSet name (a DNS label)")
    p.add_argument("--image", required=True, help="a container image with Kairos at /kairos")
    p.add_argument("--type", default="v5litepod-16", help=f"TPU type: {', '.join(SLICES)}")
    p.add_argument("--slices", type=int, default=1, help="slices of --type (multislice when > 1)")
    p.add_argument("--volume", default=None, help="CLAIM:/mount/path, the shared volume of the work directory")
    p.add_argument("--max_restarts", type=int, default=3, help="JobSet restarts after a failure or preemption")
    p.add_argument("--manifest", default="kairos-jobset.yaml", help="where to write the manifest")
    p.add_argument("--dry_run", action="store_true", help="print the manifest and the kubectl command, run nothing")
    args = p.parse_args(argv)
    if not command:
        p.error("give the Kairos command after `--`, e.g. `-- train --config configs/cifar10.py --workdir W`")
    if args.max_restarts < 0:
        p.error(f"--max_restarts must be >= 0, got {args.max_restarts}")
    if args.slices < 1:
        p.error(f"--slices must be >= 1, got {args.slices}")
    if args.volume is not None and (":" not in args.volume or not args.volume.split(":", 1)[1].startswith("/")):
        p.error(f"--volume must be CLAIM:/absolute/mount/path, got {args.volume!r}")
    return args, command


def main(argv: list[str] | None = None, out=None) -> Shell:
    args, command = parse(sys.argv[1:] if argv is None else argv)
    sh = Shell(args.dry_run, out)
    apply(args, command, sh)
    return sh


if __name__ == "__main__":
    main()
