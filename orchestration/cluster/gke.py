"""The JobSet manifest of ``python -m launch.gke``: one replicated job per TPU slice, one pod
per host, each running a Kairos command, with the ``MEGASCALE_*`` settings of multislice;
written and applied with ``kubectl``."""

from __future__ import annotations

import argparse
import json
import shlex

from orchestration.cluster.shell import Shell, kairos_command

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


def apply(args: argparse.Namespace, command: list[str], sh: Shell) -> None:
    """Writes the manifest to ``args.manifest`` and applies it (``args``: the launcher's flags)."""
    sh.write(args.manifest, json.dumps(manifest(args, command), indent=2) + "\n")
    sh.run(["kubectl", "apply", "-f", args.manifest])
