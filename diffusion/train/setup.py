"""Sharded initialisation and the jitted, donated training step.

``init_state``: ``jax.eval_shape`` gives the abstract state, the sharding rules turn
it into shardings, and the state is created under ``jit`` with ``out_shardings`` -- so
no full copy ever lives on one device. ``jit_train_step``: the step with those
shardings in and out and the state donated.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import optax
from jax.sharding import Mesh

from diffusion.train.sharding import batch_sharding, place_whole, replicated, state_shardings
from diffusion.train.state import TrainState, create_train_state


def state_factory(init_params: Callable[[jax.Array], Any], optimizer: optax.GradientTransformation,
                  rng: jax.Array) -> Callable[[], TrainState]:
    """``() -> TrainState``: params from ``init_params(fold_in(rng, 0))`` (e.g.
    ``lambda k: module.init(k, ...)["params"]``), step keys from ``fold_in(rng, 1)``."""

    def make() -> TrainState:
        params = init_params(jax.random.fold_in(rng, 0))
        return create_train_state(params, optimizer, jax.random.fold_in(rng, 1))

    return make


def abstract_state(make: Callable[..., TrainState], mesh: Mesh, *args, min_fsdp_size: int = 2**14
                   ) -> tuple[TrainState, Any]:
    """``(abstract state, shardings)``: shapes from ``jax.eval_shape(make, *args)``,
    shardings from the rules (``sharding.leaf_spec``), and the abstract leaves carrying
    them (the template for a restore)."""
    shapes = jax.eval_shape(make, *args)
    shardings = state_shardings(shapes, mesh, min_fsdp_size)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)
    return abstract, shardings


def init_state(make: Callable[..., TrainState], shardings: Any, mesh: Mesh, *args) -> TrainState:
    """Creates the state under ``jit`` directly in its shardings; ``args`` (e.g. teacher
    params) are passed to ``make`` as arguments, not baked in as constants.

    On CPU the one-off init program is compiled without LLVM optimisation: XLA's CPU
    backend spends ~10 s optimising the threefry RNG of every initializer, twice the
    time the unoptimised program takes to compile and run.
    """
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    args = place_whole(args, replicated(mesh))  # e.g. teacher params on each process's own device
    with mesh:
        return jax.jit(make, out_shardings=shardings).lower(*args).compile(compiler_options=options)(*args)


def jit_train_step(train_step: Callable, shardings: Any, mesh: Mesh) -> Callable:
    """``jax.jit`` of ``train_step(state, batch) -> (state, metrics)`` with the state
    sharded per ``shardings`` (donated), the batch split over the mesh, metrics replicated."""
    return jax.jit(
        train_step,
        in_shardings=(shardings, batch_sharding(mesh)),
        out_shardings=(shardings, replicated(mesh)),
        donate_argnums=(0,),
    )
