"""The sampling-part registry: every part's traced knobs sweep without recompiling, spec
strings round-trip, wrapping follows the declared order, and a part added in one file (the
toy ``x0_clip``) works with no other edit."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.nn.denoiser import Denoiser
from diffusion.nn.unet import UNet
from diffusion.schedules import make_schedule
from sampling import loop, registry
from sampling.loop import sample
from sampling.registry import Knob, ModelCaps, SolverPart, TransformPart
from sampling.spec import SamplerSpec, make_spec
from sampling.transforms import FeatureCache, Guided
from tests.sampling import toy_transform
from tests.sampling.toy_transform import ClipX0

SCHED = make_schedule("linear")
NET = UNet(channels=4, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_heads=1, num_classes=3)
DEN = Denoiser(NET, SCHED, "x0")
CAPS = ModelCaps(null_label=3, self_attention=True, feature_branches=NET.num_branches)
STEPS = 4


@functools.lru_cache(maxsize=None)
def params():
    p = NET.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)), label=jnp.zeros((1,), jnp.int32))
    leaves, tree = jax.tree.flatten(p["params"])
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    return jax.tree.unflatten(tree, [w + 0.05 * jax.random.normal(k, w.shape) for w, k in zip(leaves, keys)])


def run(spec: SamplerSpec) -> np.ndarray:
    den, solver, grid = spec.build(DEN, CAPS)
    x_T = jax.random.normal(jax.random.PRNGKey(2), (3, 8, 8, 1))
    return np.asarray(sample(den, params(), solver, grid, x_T, {"label": jnp.arange(3)}, jax.random.PRNGKey(3)))


def traced_knobs():
    """``(key holding the knob, knob, base values)`` for every traced knob with examples."""
    out = []
    for part in registry.solvers().values():
        out += [(k.flag, k, {"solver": part.name}) for k in part.knobs if k.traced and k.examples]
    for part in registry.transforms().values():
        spec_knobs = part.spec_knobs()
        for k in part.knobs:
            if k.traced and k.examples and k.flag is None:
                out.append((part.name, k, {"spec_knobs": spec_knobs}))
    return out


@pytest.mark.parametrize("key,knob,base", traced_knobs(), ids=[f"{k}.{knob.name}" for k, knob, _ in traced_knobs()])
def test_every_traced_knob_sweeps_without_recompiling(key, knob, base):
    def spec_with(example):
        if "solver" in base:
            return make_spec(base["solver"], STEPS, **{key: example})
        part = registry.transform(key)
        values = {k.name: (example if k is knob else k.examples[0]) for k in base["spec_knobs"]}
        return make_spec("ddim", STEPS, **{key: part.format_spec(values)})

    first = run(spec_with(knob.examples[0]))
    size = loop._chain_jit._cache_size()
    second = run(spec_with(knob.examples[1]))
    assert loop._chain_jit._cache_size() == size, f"{key}.{knob.name} recompiled"
    assert np.abs(first - second).max() > 1e-6, f"{key}.{knob.name} changed nothing"


def test_every_part_has_help_and_its_spec_round_trips():
    for key, text in registry.key_help().items():
        assert len(text) > 10, key
    for part in registry.transforms().values():
        values = {k.name: k.examples[0] for k in part.spec_knobs()}
        spec = make_spec("ddim", STEPS, **{part.name: part.format_spec(values)})
        assert SamplerSpec.parse(spec.to_string()) == spec
        assert part.tag_of(spec.knobs(part.name)) in spec.tag()


def test_wrapping_follows_the_declared_order():
    den, _, _ = make_spec("ddim", STEPS, x0_clip=1, guidance=2, feature_cache="uniform:2").build(DEN, CAPS)
    assert isinstance(den, ClipX0) and isinstance(den.denoiser, Guided)  # 95 outside 90
    assert isinstance(den.denoiser.denoiser, FeatureCache) and den.denoiser.denoiser.denoiser is DEN


def test_a_toy_part_in_one_file_samples_like_a_built_in_one():
    assert toy_transform.__file__ and "x0_clip" in registry.keys()
    plain = run(make_spec("ddim", STEPS))
    np.testing.assert_allclose(run(make_spec("ddim", STEPS, x0_clip=100.0)), plain, rtol=1e-5, atol=1e-6)
    clipped = run(make_spec("ddim", STEPS, x0_clip=0.05))
    assert np.abs(clipped).max() <= 0.05 + 1e-6 < np.abs(plain).max()  # DDIM ends on the clipped x0
    assert make_spec("ddim", STEPS, x0_clip=0.05).tag() == "ddim_4steps_clip0.05"


def test_registering_a_taken_name_or_key_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        registry.register(SolverPart("ddim", lambda s: None, "another ddim"))
    with pytest.raises(ValueError, match="key 'eta' is already taken"):
        registry.register(TransformPart("noise_scale", "denoiser", 1, lambda d, k, c: d, "x",
                                        knobs=(Knob("eta", float, 0.0, flag="eta"),)))
    with pytest.raises(ValueError, match="wraps must be"):
        registry.register(TransformPart("other", "model", 1, lambda d, k, c: d, "x"))
