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
import json
import shlex
import sys

from launch.shell import Shell, kairos_command, split_command

# accelerator type -> (GKE accelerator label, chips per host, topology); hosts = chips / chips per host
SLICES = {
    "v4-8": ("tpu-v4-podslice", 4, "2x2x1"), "v4-16": ("tpu-v4-podslice", 4, "2x2x2"),
    "v4-32": ("tpu-v4-podslice", 4, "2x2x4"), "v4-64": ("tpu-v4-podslice", 4, "2x4x4"),
    "v5litepod-4": ("tpu-v5-lite-podslice", 4, "2x2"), "v5litepod-8": ("tpu-v5-lite-podslice", 8, "2x4"),
    "v5litepod-16": ("tpu-v5-lite-podslice", 4, "4x4"), "v5litepod-32": ("tpu-v5-lite-podslice", 4, "4x8"),
    "v5litepod-64": ("tpu-v5-lite-podslice", 4, "8x8"), "v5p-8": ("tpu-v5p-slice", 4, "2x2x1"),
    "v5p-16": ("tpu-v5p-slice", 4, "2x2x2"), "v5p-32": ("tpu-v5p-slice", 4, "2x2x4"),
    "v6e-4": ("tpu-v6e-slice", 4, "2x2"), "v6e-8": ("tpu-v6e-slice", 8, "2x4"),
    "v6e-16": ("tpu-v6e-slice", 4, "4x4"), "v6e-32": ("tpu-v6e-slice", 4, "4x8"),
}


def hosts_of(accelerator: str) -> tuple[str, int, str, int]:
    """``(GKE accelerator label, chips per host, topology, hosts)`` of an accelerator type."""
    if accelerator not in SLICES:
        raise SystemExit(f"error: unknown TPU type {accelerator!r}; known: {', '.join(SLICES)}")
    label, per_host, topology = SLICES[accelerator]
    chips = 1
    for n in topology.split("x"):
        chips *= int(n)
    return label, per_host, topology, chips // per_host


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


def manifest(args: argparse.Namespace, command: list[str]) -> dict:
    """The JobSet: one job per slice, of one pod per host of the slice, each running the command."""
    label, per_host, topology, hosts = hosts_of(args.type)
    argv = kairos_command(command)
    env = [{"name": "HF_HUB_OFFLINE", "value": "1"}]
    if args.slices > 1:  # pods are <name>-slice-<job>-<pod> under the subdomain <name> (JobSet's DNS names)
        env += [{"name": "MEGASCALE_COORDINATOR_ADDRESS", "value": f"{args.name}-slice-0-0.{args.name}"},
                {"name": "MEGASCALE_NUM_SLICES", "value": str(args.slices)},
                {"name": "MEGASCALE_SLICE_ID", "valueFrom": {"fieldRef": {
                    "fieldPath": "metadata.annotations['jobset.sigs.k8s.io/job-index']"}}}]
    container = {"name": "kairos", "image": args.image, "workingDir": "/kairos",
                 "command": ["bash", "-c", shlex.join(argv)],
                 "env": env,
                 "ports": [{"containerPort": 8471}, {"containerPort": 8080}],
                 "securityContext": {"privileged": True},
                 "resources": {"limits": {"google.com/tpu": per_host}}}
    pod = {"nodeSelector": {"cloud.google.com/gke-tpu-accelerator": label,
                            "cloud.google.com/gke-tpu-topology": topology},
           "restartPolicy": "Never", "containers": [container]}
    if args.volume:
        claim, path = args.volume.split(":", 1)
        container["volumeMounts"] = [{"name": "workdirs", "mountPath": path}]
        pod["volumes"] = [{"name": "workdirs", "persistentVolumeClaim": {"claimName": claim}}]
    job = {"parallelism": hosts, "completions": hosts, "backoffLimit": 0,
           "template": {"spec": pod}}
    return {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
            "metadata": {"name": args.name,
                         "annotations": {"alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"}},
            "spec": {"failurePolicy": {"maxRestarts": args.max_restarts},
                     "replicatedJobs": [{"name": "slice", "replicas": args.slices, "template": {"spec": job}}]}}


def main(argv: list[str] | None = None, out=None) -> Shell:
    args, command = parse(sys.argv[1:] if argv is None else argv)
    sh = Shell(args.dry_run, out)
    sh.write(args.manifest, json.dumps(manifest(args, command), indent=2) + "\n")
    sh.run(["kubectl", "apply", "-f", args.manifest])
    return sh


if __name__ == "__main__":
    main()
