"""The jitted training step: gradients, a non-finite guard, the optimizer and the EMA.

A method is a loss ``loss_fn(params, batch, rng, state) -> (loss, aux_metrics)``;
the step knows nothing else about it (plain diffusion and every distiller share it).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from diffusion.train.state import TrainState

LossFn = Callable[[Any, Any, jax.Array, TrainState], tuple[jax.Array, dict]]


def ema_decay_at(step: jax.Array, decay: float, warmup: bool = True) -> jax.Array:
    """``min(decay, (1 + step) / (10 + step))`` with warmup, else ``decay``."""
    if not warmup:
        return jnp.asarray(decay, jnp.float32)
    s = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + s) / (10.0 + s))


LATENT_STD = "latent_std"  # a batch's VAE posterior std: its "image" is the mean, sampled each step
LATENT_STREAM = 0x1A7E  # the step key's fold for that sample (the loss's own keys stay as they were)


def sample_latents(batch: Any, rng: jax.Array) -> Any:
    """``batch`` with ``image = image + latent_std * eps`` (diffusers'
    ``latent_dist.sample()``; ``eps`` from ``fold_in(rng, LATENT_STREAM)``, the step's key, so
    a resumed run draws the same) when it carries ``LATENT_STD``; else ``batch`` unchanged."""
    if not isinstance(batch, dict) or LATENT_STD not in batch:
        return batch
    batch = dict(batch)
    std, mean = batch.pop(LATENT_STD), batch["image"]
    eps = jax.random.normal(jax.random.fold_in(rng, LATENT_STREAM), mean.shape, mean.dtype)
    return {**batch, "image": mean + std * eps}


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, ema_decay: float,
                    ema_warmup: bool = True, after_update: Callable[..., TrainState] | None = None,
                    to_network: Callable[[Any], Any] | None = None,
                    ) -> Callable[[TrainState, Any], tuple[TrainState, dict]]:
    """Returns ``train_step(state, batch) -> (state, metrics)`` (not yet jitted).

    A step whose loss or gradients are not finite leaves params, EMA and optimizer state
    untouched, increments ``skipped`` / ``consecutive_skipped`` and still advances
    ``step`` (its batch is consumed). Metrics: ``loss``, ``grad_norm``, ``finite``,
    ``lr``-free aux values from the loss. A batch with a VAE posterior's std has its latents
    sampled first (:func:`sample_latents`). ``after_update(state, carry) -> state`` runs last,
    on the advanced state (a method's extra state: a distillation round, an EMA target, a
    second network's optimizer step); ``carry`` is the loss's ``aux["carry"]`` (what that
    step needs from the loss's forward pass; not a metric), None when absent.

    ``to_network`` maps trained params to network params (LoRA's merge,
    ``diffusion/train/lora.py``): the loss and ``after_update`` see network params, the
    EMA is kept of them; the optimizer updates the trained tree.
    """
    net = to_network or (lambda p: p)
    if to_network is not None:
        inner_loss = loss_fn
        loss_fn = lambda params, *args: inner_loss(to_network(params), *args)  # noqa: E731

    def train_step(state: TrainState, batch: Any) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        batch = sample_latents(batch, rng)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng, state)
        aux = dict(aux)
        carry = aux.pop("carry", None)
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)  # any NaN/Inf gradient makes the norm non-finite
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        d = ema_decay_at(state.step, ema_decay, ema_warmup)
        ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema_params, net(params))

        def keep_if_finite(new, old):
            return jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)

        skip = (~finite).astype(jnp.int32)
        new_state = state.replace(
            step=state.step + 1,
            params=keep_if_finite(params, state.params),
            ema_params=keep_if_finite(ema, state.ema_params),
            opt_state=keep_if_finite(opt_state, state.opt_state),
            skipped=state.skipped + skip,
            consecutive_skipped=(state.consecutive_skipped + skip) * skip,
        )
        if after_update is not None and to_network is None:
            new_state = after_update(new_state, carry)
        elif after_update is not None:  # it sees network params; the trained tree is kept
            trained = new_state.params
            new_state = after_update(new_state.replace(params=to_network(trained)), carry).replace(params=trained)
        metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite, **aux}
        return new_state, metrics

    return train_step
