"""pytorch-fid's Inception state dict -> :class:`diffusion.nn.inception.InceptionV3FID` params.

The state dict is that of pytorch-fid's ``fid_inception_v3()`` (torchvision's ``Inception3``
with 1008 classes, no aux head): ``pt_inception-2015-12-05-6726825d.pth``. Every Flax
param has the torch name with ``/`` for ``.``; ``conv.weight [O, I, kh, kw]`` becomes
``conv/kernel [kh, kw, I, O]`` and ``bn.weight``, ``bn.bias``, ``bn.running_mean``,
``bn.running_var`` become ``bn/scale``, ``bias``, ``mean``, ``var`` (kept as statistics, not
folded into the conv: converters only move numbers, ``diffusion.convert.invert``). The
1008-class ``fc`` head and BatchNorm's ``num_batches_tracked`` are not used by the pool3
features and are skipped.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from diffusion.convert.tensors import ConversionError, StateDict, check_params
from diffusion.nn.inception import InceptionV3FID

_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
FID_CLASSES = 1008  # TF's 2015 Inception head; torchvision's ImageNet Inception has 1000


def _unused(key: str) -> bool:
    """The tensors the pool3 features do not use: the 1008-class head, BatchNorm's counters."""
    return key in ("fc.weight", "fc.bias") or key.endswith(".num_batches_tracked")


def expected_params() -> dict:
    """The Flax model's param shapes (``jax.ShapeDtypeStruct`` leaves), nested."""
    return jax.eval_shape(lambda: InceptionV3FID(resize_input=False).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 75, 75, 3))))["params"]


def convert_inception(tensors: Mapping[str, np.ndarray], source: str) -> dict:
    """Flax params from pytorch-fid's Inception state dict (keys ``Conv2d_1a_3x3.conv.weight``,
    ``Mixed_7c.branch_pool.bn.running_var``, ...).

    Raises:
      ConversionError: naming a missing, unexpected or mis-shaped tensor, or an ``fc`` head that
        is not the FID network's 1008 classes (torchvision's ImageNet weights are not FID's).
    """
    fc = tensors.get("fc.weight")
    if fc is not None and np.shape(fc)[0] != FID_CLASSES:
        raise ConversionError(f"{source}: fc.weight has shape {tuple(np.shape(fc))}, the FID Inception's has "
                              f"{FID_CLASSES} classes: these are not pytorch-fid's FID weights (torchvision's "
                              "ImageNet Inception gives other features)")
    sd, expected, flat = StateDict({k: v for k, v in tensors.items() if not _unused(k)}, source), expected_params(), {}
    for path, spec in traverse_util.flatten_dict(expected).items():
        *module, leaf = path
        key = ".".join([*module, _TORCH_LEAF[leaf]])
        value = sd.take(key)
        want = (spec.shape[3], spec.shape[2], spec.shape[0], spec.shape[1]) if leaf == "kernel" else spec.shape
        if value.shape != tuple(want):
            raise ConversionError(f"{source}: tensor {key!r} has shape {value.shape}, the FID Inception's has "
                                  f"{tuple(want)}")
        flat[path] = value.transpose(2, 3, 1, 0) if leaf == "kernel" else value
    sd.finish()
    params = traverse_util.unflatten_dict(flat)
    check_params(params, expected, source)
    return params
