"""Entry points only: ``python -m launch.<command>``.

train, distill, sample, evaluate, phast, memory, import_weights run a job; tpu_vm, gke and
slurm launch one on a cluster. Each parses its flags, calls one function of
``orchestration/`` and prints what it returns; ``cli.py`` is their shared flag and error
plumbing. Nothing imports an entry point (docs/architecture.md).
"""
