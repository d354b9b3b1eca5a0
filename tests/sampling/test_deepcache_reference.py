"""Feature caching against DeepCache's code (DeepCache@1691a3ab): ``cache_branch k`` runs on a
retrieve step exactly the blocks its ``--branch k`` runs (DDPM code,
``deepcache_diffusion.py:311-356``: level ``k // 3``, slot ``k % 3``, 2 being the downsample),
and ``nonuniform:N,CENTER,POW`` places the full steps of its ``sample_from_quad_center``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.contract import Modes
from diffusion.nn.unet import UNet
from sampling.registry import BuildContext, ModelCaps, transform
from sampling.transforms.schedules import nonuniform_full

BLOCKS = {  # the reference's retrieve path on a 2-level UNet with 2 residual blocks per level
    -1: {"conv_in", "up_0_res_2"},  # its pip helper's branch id 0 (our numbering before issue 26)
    0: {"conv_in", "down_0_res_0", "up_0_res_1", "up_0_res_2"},
    1: {"conv_in", "down_0_res_0", "down_0_res_1", "up_0_res_0", "up_0_res_1", "up_0_res_2"},
    2: {"conv_in", "down_0_res_0", "down_0_res_1", "down_0_downsample", "up_1_res_2", "up_1_upsample",
        "up_0_res_0", "up_0_res_1", "up_0_res_2"},  # the paper's DDPM setting
    3: {"conv_in", "down_0_res_0", "down_0_res_1", "down_0_downsample", "down_1_res_0", "up_1_res_1", "up_1_res_2",
        "up_1_upsample", "up_0_res_0", "up_0_res_1", "up_0_res_2"},
    4: {"conv_in", "down_0_res_0", "down_0_res_1", "down_0_downsample", "down_1_res_0", "down_1_res_1", "up_1_res_0",
        "up_1_res_1", "up_1_res_2", "up_1_upsample", "up_0_res_0", "up_0_res_1", "up_0_res_2"},
}
NET = UNet(channels=8, channel_mult=(1, 2), num_res_blocks=2, attn_resolutions=(4,), num_heads=2, num_classes=3)


def retrieve_blocks(branch: int) -> set[str]:
    """The blocks a retrieve call of ``cache_branch`` runs (as the registered part builds it)."""
    cache = transform("feature_cache").build(None, {"schedule": "uniform:2", "branch": branch},
                                             BuildContext(4, ModelCaps(feature_branches=NET.num_branches)))
    x, t, label = jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32)
    store = Modes(features="store", feature_branch=cache.branch)
    retrieve = Modes(features="retrieve", feature_branch=cache.branch)

    def run():
        variables = NET.init(jax.random.PRNGKey(0), x, t, label=label, modes=store)
        _, state = NET.apply(variables, x, t, label=label, modes=retrieve, capture_intermediates=True,
                             mutable=["intermediates"])
        return state["intermediates"]

    called = jax.eval_shape(run)
    return {n for n in called if n.startswith(("conv_in", "down_", "up_", "mid")) and "_attn" not in n}


@pytest.mark.parametrize("branch", sorted(BLOCKS))
def test_cache_branch_k_runs_the_blocks_deepcache_branch_k_runs(branch):
    assert retrieve_blocks(branch) == BLOCKS[branch]


def test_a_branch_past_the_deepest_is_refused():
    with pytest.raises(ValueError, match=r"cache_branch 5 does not exist: this model has cache branches -1..4"):
        transform("feature_cache").build(None, {"schedule": "uniform:2", "branch": 5},
                                         BuildContext(4, ModelCaps(feature_branches=NET.num_branches)))


@pytest.mark.parametrize("steps, interval, center, power, full", [
    (50, 5, 15, 1.4, [0, 5, 9, 13, 17, 21, 26, 31, 37, 43]),  # the authors' SD demo (stable_diffusion.py:57-62)
    (100, 5, 50, 1.2, [0, 6, 11, 17, 22, 27, 32, 37, 42, 46, 50, 54, 58, 63, 68, 73, 78, 83, 89, 94]),
    (20, 3, 10, 1.2, [0, 4, 7, 9, 11, 13, 16]),
])
def test_nonuniform_places_the_full_steps_of_sample_from_quad_center(steps, interval, center, power, full):
    """Pinned values: the reference function run as released (a complex power, real part)."""
    np.testing.assert_array_equal(np.flatnonzero(nonuniform_full(steps, interval, center, power)), full)


def test_nonuniform_takes_its_power_in_the_spec():
    part = transform("feature_cache")
    assert part.parse_spec("nonuniform:5,15,1.4") == {"schedule": "nonuniform:5,15,1.4"}
    assert part.parse_spec("nonuniform:5,15,1.2") == {"schedule": "nonuniform:5,15"}  # the default, canonical
    built = part.build(None, {"schedule": "nonuniform:5,15,1.4", "branch": 0}, BuildContext(50, ModelCaps(
        feature_branches=3)))
    np.testing.assert_array_equal(np.flatnonzero(built.full), [0, 5, 9, 13, 17, 21, 26, 31, 37, 43])
    for bad in ("nonuniform:5,15,1.0", "nonuniform:5,15,nan", "nonuniform:5,15,x"):
        with pytest.raises(ValueError, match="POW > 1"):
            part.parse_spec(bad)
