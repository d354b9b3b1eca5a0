"""Rematerialisation of a UNet's blocks (``config.model.remat``): in training, each
residual, attention and transformer block is wrapped in ``jax.checkpoint`` with a policy
from ``jax.checkpoint_policies``, so the backward pass recomputes what the policy does
not save instead of keeping it from the forward pass. Sampling (``train=False``) runs the
plain blocks, and the parameters are the same either way (the blocks keep their names).

Policies (what each block keeps for the backward pass besides its inputs):

* ``off``: everything (no remat);
* ``nothing_saveable``: nothing (each block's forward runs twice; the least memory);
* ``dots_with_no_batch_dims_saveable``: the outputs of matmuls without batch dimensions
  (the dense projections; convolutions and attention scores are recomputed);
* ``dots_saveable``: every matmul's output (also the attention scores).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax

POLICIES = ("off", "nothing_saveable", "dots_with_no_batch_dims_saveable", "dots_saveable")


def check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"unknown remat policy {policy!r} (config.model.remat); expected one of {', '.join(POLICIES)}")


def block(cls: type[nn.Module], policy: str, train: bool, static_argnums: tuple[int, ...] = ()) -> type[nn.Module]:
    """``cls``, or its checkpointed version when training under ``policy``.
    ``static_argnums`` count ``self`` as 0 (Flax's convention): the Python arguments of
    ``__call__`` (``train`` flags, attention modes, frame counts)."""
    check_policy(policy)
    if policy == "off" or not train:
        return cls
    return _checkpointed(cls, policy, static_argnums)


@functools.lru_cache(maxsize=None)
def _checkpointed(cls, policy, static_argnums):
    return nn.remat(cls, policy=getattr(jax.checkpoint_policies, policy), static_argnums=static_argnums)
