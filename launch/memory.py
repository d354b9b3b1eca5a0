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
(``launch.experiment.check_buildable``).
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from launch import cli

config_flags.DEFINE_config_file("config", None, "Training config: path/to/file.py[:variant].", lock_config=False)
flags.mark_flags_as_required(["config"])
FLAGS = flags.FLAGS


def activation_estimate(config, info, per_device_batch: int, policies) -> dict[str, int]:
    """``{policy: bytes}`` the network's training step keeps for its backward pass on one
    device (``per_device_batch`` samples), for each remat policy in ``policies``
    (``config`` is not changed)."""
    import copy

    import jax
    import jax.numpy as jnp

    from diffusion.train.memory import activation_bytes
    from launch.builders import build_network, init_params, network_inputs

    config = copy.deepcopy(config)
    inputs = network_inputs(config, info, per_device_batch)
    params = jax.eval_shape(lambda: init_params(config, info, jax.random.PRNGKey(0)))
    out = {}
    for policy in policies:
        with config.unlocked():
            config.model.remat = policy
        net = build_network(config, info)

        def loss(params, inputs):
            cond = {k: v for k, v in inputs.items() if k not in ("x", "t")}
            y = net.apply({"params": params}, inputs["x"], inputs["t"], **cond, train=True,
                          rngs={"dropout": jax.random.PRNGKey(0)})
            return jnp.sum(y)

        out[policy] = activation_bytes(loss, params, inputs)
    return out


def policies_from(configured: str) -> list[str]:
    """``configured`` first, then the other remat policies."""
    from diffusion.nn.remat import POLICIES, check_policy

    check_policy(configured)
    return [configured, *(p for p in POLICIES if p != configured)]


def estimate(config, devices=None) -> tuple:
    """``(diffusion.train.memory.StateMemory with every policy's activations, mesh)`` of a training ``config`` on a
    mesh of ``devices`` (default: all); every input is checked before anything is traced.

    Raises:
      ValueError: a bad config, a VAE config, a mesh or batch that does not fit the devices.
    """
    import jax

    from diffusion.train.memory import state_memory
    from diffusion.train.setup import abstract_state, state_factory
    from diffusion.train.sharding import make_mesh
    from launch.builders import build_source, init_params
    from launch.experiment import check_batch_splits, make_optimizer_from
    from launch.validation import validate_config

    validate_config(config, "train")
    if config.model.kind == "vae":
        raise ValueError("launch.memory estimates diffusion models; this config trains a VAE")
    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, devices)
    check_batch_splits(config.train.batch_size, mesh.devices.size)
    _, info = build_source(config)
    make = state_factory(lambda key: init_params(config, info, key), make_optimizer_from(config.train),
                         jax.random.PRNGKey(config.seed))
    activations = activation_estimate(config, info, config.train.batch_size // mesh.devices.size,
                                      policies_from(config.model.remat))
    return state_memory(abstract_state(make, mesh)[0], activations), mesh


def main(argv):
    from diffusion.train.memory import gib

    config = FLAGS.config
    memory, mesh = estimate(config)
    devices = mesh.devices.size
    print(f"{devices} devices (mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}), batch "
          f"{config.train.batch_size} ({config.train.batch_size // devices} per device)")
    print(memory.describe_state())
    for policy, size in memory.activations.items():
        print(f"  remat {policy:<34} activations {gib(size):>10}, with the state {gib(memory.state + size):>10}")


MAIN = cli.with_clean_errors(main)

if __name__ == "__main__":
    cli.run(MAIN)
