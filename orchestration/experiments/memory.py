"""A training config's memory per device, allocating nothing (``python -m launch.memory``):
the train state's bytes (params, optimizer state, EMA and a method's state, from abstract
shapes and the mesh's shardings) and the activations one training step keeps for its
backward pass at the configured batch, for every remat policy (``--config.model.remat``;
``diffusion/nn/remat.py``), from a trace of the network's forward pass. A run on a GPU or
TPU prints its estimate before it allocates anything and refuses a config that cannot fit
(``orchestration.experiments.runner.check_buildable``).
"""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp

from diffusion.nn.remat import POLICIES, check_policy
from diffusion.train.memory import StateMemory, activation_bytes, gib, state_memory
from diffusion.train.setup import abstract_state, state_factory
from diffusion.train.sharding import make_mesh
from orchestration.build.builders import build_network, build_source, init_params, make_optimizer_from, network_inputs
from orchestration.build.validation import validate_config


def activation_estimate(config, info, per_device_batch: int, policies) -> dict[str, int]:
    """``{policy: bytes}`` the network's training step keeps for its backward pass on one
    device (``per_device_batch`` samples), for each remat policy in ``policies``
    (``config`` is not changed)."""
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
    check_policy(configured)
    return [configured, *(p for p in POLICIES if p != configured)]


def estimate(config, devices=None) -> tuple:
    """``(diffusion.train.memory.StateMemory with every policy's activations, mesh)`` of a training ``config`` on a
    mesh of ``devices`` (default: all); every input is checked before anything is traced.

    Raises:
      ValueError: a bad config, a VAE config, a mesh or batch that does not fit the devices.
    """
    from orchestration.experiments.init_from import finetune_config

    config, _ = finetune_config(config, None)  # a fine-tune's model is its base's
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


def check_batch_splits(batch_size: int, devices: int) -> None:
    """The global batch must split evenly over the mesh's devices."""
    if batch_size % devices:
        raise ValueError(f"config.train.batch_size={batch_size} does not split over the {devices} devices of the mesh; "
                         f"use a multiple of {devices}")


def describe(memory: StateMemory, mesh, batch_size: int) -> str:
    """The estimate of :func:`estimate` as the lines ``launch.memory`` prints."""
    devices = mesh.devices.size
    lines = [f"{devices} devices (mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']}), batch "
             f"{batch_size} ({batch_size // devices} per device)", memory.describe_state()]
    for policy, size in memory.activations.items():
        lines.append(f"  remat {policy:<34} activations {gib(size):>10}, with the state {gib(memory.state + size):>10}")
    return "\n".join(lines)
