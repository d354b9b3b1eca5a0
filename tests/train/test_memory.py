"""FSDP on an SD-1.5-sized UNet, with abstract shapes only (``jax.eval_shape``: nothing is
allocated): the per-device bytes of params + optimizer state fall as 1 / fsdp over the 8
fake devices, and a state larger than the device is refused with the estimate."""

import jax
import jax.numpy as jnp
import pytest

from benchmarks.sd_unet_speed import CONTEXT_LEN, SD15_UNET
from diffusion.nn.sd_unet import SDUNet, SDUNetConfig
from diffusion.train.memory import check_fits, shard_bytes, state_memory
from diffusion.train.optim import make_optimizer
from diffusion.train.sharding import make_mesh, state_shardings
from diffusion.train.state import create_train_state


def make_sd15_state():
    net = SDUNet(SDUNetConfig.from_dict(SD15_UNET))
    x, ctx = jnp.zeros((1, 64, 64, 4)), jnp.zeros((1, CONTEXT_LEN, SD15_UNET["cross_attention_dim"]))
    params = net.init(jax.random.PRNGKey(0), x, jnp.zeros((1,)), context=ctx)["params"]
    return create_train_state(params, make_optimizer(1e-4, 0, 100), jax.random.PRNGKey(1))


def test_fsdp_splits_an_sd15_unets_params_and_optimizer_state():
    shapes, per_device = jax.eval_shape(make_sd15_state), {}
    for fsdp in (1, 2, 4, 8):  # the rules of diffusion.train.setup.abstract_state, on each mesh
        shardings = state_shardings(shapes, make_mesh(8 // fsdp, fsdp, jax.devices()))
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)
        per_device[fsdp] = state_memory(abstract)
    count = sum(x.size for x in jax.tree.leaves(abstract.params))
    assert count == 859_520_964  # diffusers' SD-1.5 UNet2DConditionModel
    whole = per_device[1]
    assert whole.params == 4 * count and whole.optimizer == pytest.approx(2 * whole.params, rel=1e-3)  # Adam's mu, nu
    for fsdp, m in per_device.items():
        share = (m.params + m.optimizer) / (whole.params + whole.optimizer)
        assert share == pytest.approx(1 / fsdp, rel=0.03), (fsdp, share)  # small leaves stay replicated
    assert shard_bytes(abstract) == per_device[8].total
    with pytest.raises(ValueError, match=r"cannot fit the devices: train state per device: params 0\.40 GiB.* of "
                                         r"1\.00 GiB on the device.*--config\.mesh\.fsdp"):
        check_fits(per_device[8], 2**30)
    check_fits(per_device[8], 2**34)  # fits: no error
