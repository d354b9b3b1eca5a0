"""Cluster launch: print-then-run shell commands for Cloud TPU VMs, GKE and SLURM, and joining a multi-process run."""
