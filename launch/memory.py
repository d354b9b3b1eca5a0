r"""Estimates a config's training memory per device, allocating nothing.

    python -m launch.memory --config configs/scenes.py [--config.train.batch_size=64] [--config.mesh.fsdp=8]
    XLA_FLAGS=--xla_force_host_platform_device_count=64 python -m launch.memory --config ...   # a pod's mesh

Prints the train state's bytes per device (params, optimizer state, EMA and a method's
state, from abstract shapes and the mesh's shardings) and the activations one training
step keeps for its backward pass at the configured batch, for every remat policy
(``--config.model.remat``; ``diffusion/nn/remat.py``), from a trace of the network's
forward pass. The mesh is this machine's devices; fake CPU devices (``XLA_FLAGS`` above)
check a pod's layout on a laptop. A training config (``launch.train``'s): a distillation
run adds its method's state (e.g. the teacher's params) on top. A run on a GPU or TPU
prints its estimate before it allocates anything and refuses a config that cannot fit
(``orchestration/experiments/memory.py``).
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from launch import cli

config_flags.DEFINE_config_file("config", None, "Training config: path/to/file.py[:variant].", lock_config=False)
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def main(argv):
    from orchestration.experiments.memory import describe, estimate

    memory, mesh = estimate(FLAGS.config)
    print(describe(memory, mesh, FLAGS.config.train.batch_size))


MAIN = cli.with_clean_errors(main)

if __name__ == "__main__":
    cli.run(MAIN)
