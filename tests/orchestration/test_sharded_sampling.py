"""``generate()`` over a mesh of the 8 fake CPU devices: the samples of the one-device run
(a stochastic sampler with guidance and attention reuse, labels, batches of 6 padded to
the 8 devices, a short last batch)."""

import jax
import numpy as np

from diffusion.nn.denoiser import Denoiser
from diffusion.train.sharding import make_mesh
from orchestration.generation.generate import generate
from sampling.registry import ModelCaps
from sampling.spec import SamplerSpec
from tests.sampling.test_loopfree import NET, PARAMS, SCHED

CAPS = ModelCaps(null_label=3, self_attention=True, feature_branches=NET.num_branches)


def test_sharded_samples_equal_the_single_device_run():
    den = Denoiser(NET, SCHED, "x0")
    spec = SamplerSpec.parse("solver=ddpm;steps=4;grid=trailing;guidance=1.5;attention_reuse=hurry:2")
    kwargs = dict(batch_size=6, seed=3, labels=np.arange(20) % 3)  # padded to 8 rows on the mesh
    one = generate(den, PARAMS, (8, 8, 1), 20, spec, CAPS, **kwargs)
    mesh = make_mesh(-1, 1, jax.devices())
    assert mesh.devices.size == 8
    sharded = generate(den, PARAMS, (8, 8, 1), 20, spec, CAPS, mesh=mesh, **kwargs)
    # equal to float32 rounding, not bitwise: XLA's CPU kernels for a per-device batch of 1
    # round differently from the batch of 8 (measured: ~2e-8 here; samples lie in about [-1, 1])
    np.testing.assert_allclose(sharded, one, rtol=0, atol=2e-6)
    assert float(np.abs(one[:10] - one[10:]).max()) > 0.1  # different seeds per batch, so a real check
