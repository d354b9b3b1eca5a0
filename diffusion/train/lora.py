"""LoRA: low-rank adapters on the attention projections, for any method (docs/design/pso.md).

The trained pytree is ``{"base": network params, "adapters": {"path/to/kernel": {"a": [in, r],
"b": [r, out]}}}``; :func:`merge` turns it into plain network params (``kernel + (alpha / r)
* reshape(a @ b)``), and :func:`optimizer` trains only the adapters. ``b`` starts at zero, so
the merged params equal the base exactly at the start. ``targets`` picks which projections get
adapters (all four by default; TiUE's fake score: ``("query", "value")``, the reference's
``target_modules=["to_q", "to_v"]``); ``init_kind`` how ``a`` starts (``"normal"``:
``N(0, 1 / d_in)``, ours; ``"peft"``: PEFT's ``kaiming_uniform_(a=sqrt(5))``, i.e.
``U(-1 / sqrt(d_in), 1 / sqrt(d_in))``, variance ``1 / (3 d_in)``; ``"gaussian"``: PEFT's
``init_lora_weights="gaussian"``, ``N(0, 1 / rank^2)``, what PSO's reference trains with).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

# MultiHeadAttention's projections (both UNets) and the number of input axes of their kernels:
# query/key/value [in, heads, head], out [heads, head, out]
TARGETS = {"query": 1, "key": 1, "value": 1, "out": 2}
INIT_KINDS = ("normal", "peft", "gaussian")


def check_targets(targets: Iterable[str]) -> tuple[str, ...]:
    """``targets`` as a tuple of projection names, each one of ``TARGETS``; raises otherwise."""
    targets = tuple(targets)
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets:
        raise ValueError(f"LoRA targets must be a non-empty subset of {tuple(TARGETS)}; got {targets}")
    return targets


def target_paths(params: Any, targets: Iterable[str] = tuple(TARGETS)) -> dict[str, int]:
    """``{"a/b/kernel": input axes}`` of every attention projection kernel in ``params`` whose
    projection is one of ``targets`` (names of ``TARGETS``)."""
    targets = check_targets(targets)
    out = {}
    for path in traverse_util.flatten_dict(params):
        if len(path) >= 2 and path[-1] == "kernel" and path[-2] in targets and _in_attention(path):
            out["/".join(path)] = TARGETS[path[-2]]
    return out


def _in_attention(path: tuple[str, ...]) -> bool:
    """A projection of a ``MultiHeadAttention`` (named ``self_attn``, ``temporal_attn``,
    ``attn1``, ``attn2``): not some other module's ``out``."""
    return any(p in ("self_attn", "temporal_attn", "attn1", "attn2") for p in path[:-2])


def init(params: Any, rank: int, key: jax.Array, targets: Iterable[str] = tuple(TARGETS),
         init_kind: str = "normal") -> dict:
    """The LoRA tree of network ``params`` with rank-``rank`` adapters on every projection
    named in ``targets``: ``a [d_in, rank]`` drawn as ``init_kind`` says (module docstring),
    ``b [rank, d_out]`` zero.

    Raises:
      ValueError: ``rank < 1``, unknown targets or init kind, or a network with no
        attention projection among the targets.
    """
    if rank < 1:
        raise ValueError(f"train.lora_rank must be >= 1 to add adapters, got {rank}")
    if init_kind not in INIT_KINDS:
        raise ValueError(f"unknown LoRA init kind {init_kind!r}; expected one of {INIT_KINDS}")
    flat = traverse_util.flatten_dict(params)
    paths = target_paths(params, targets)
    if not paths:
        raise ValueError("train.lora_rank > 0 needs attention layers: this network has no attention projection "
                         f"among {tuple(targets)} (query/key/value/out of a MultiHeadAttention)")
    adapters = {}
    for i, (path, in_axes) in enumerate(sorted(paths.items())):
        shape = flat[tuple(path.split("/"))].shape
        d_in, d_out = math.prod(shape[:in_axes]), math.prod(shape[in_axes:])
        if rank > min(d_in, d_out):
            raise ValueError(f"train.lora_rank={rank} exceeds the smaller side ({min(d_in, d_out)}) of {path} "
                             f"{tuple(shape)}; use a rank <= {min(d_in, d_out)}")
        k = jax.random.fold_in(key, i)
        if init_kind == "peft":  # torch.nn.init.kaiming_uniform_(a=sqrt(5)): bound sqrt(6 / (1 + 5) / d_in)
            a = jax.random.uniform(k, (d_in, rank), minval=-1.0, maxval=1.0) / math.sqrt(d_in)
        elif init_kind == "gaussian":  # peft lora/layer.py: nn.init.normal_(lora_A, std=1 / r)
            a = jax.random.normal(k, (d_in, rank)) / rank
        else:
            a = jax.random.normal(k, (d_in, rank)) / math.sqrt(d_in)
        adapters[path] = {"a": a, "b": jnp.zeros((rank, d_out))}
    return {"base": params, "adapters": adapters}


def merge(tree: dict, alpha: float) -> Any:
    """Plain network params: every adapted kernel plus ``(alpha / rank) * a @ b`` in its shape."""
    flat = dict(traverse_util.flatten_dict(tree["base"]))
    for path, ab in tree["adapters"].items():
        key = tuple(path.split("/"))
        kernel = flat[key]
        delta = (ab["a"] @ ab["b"]) * (alpha / ab["a"].shape[1])
        flat[key] = kernel + delta.reshape(kernel.shape).astype(kernel.dtype)
    return traverse_util.unflatten_dict(flat)


def optimizer(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """``inner`` on the adapters; the base gets no update and keeps no optimizer state."""
    return optax.multi_transform({"adapters": inner, "base": optax.set_to_zero()},
                                 lambda tree: {"base": jax.tree.map(lambda _: "base", tree["base"]),
                                               "adapters": jax.tree.map(lambda _: "adapters", tree["adapters"])})


def is_lora(tree: Any) -> bool:
    return isinstance(tree, dict) and set(tree) == {"base", "adapters"}
