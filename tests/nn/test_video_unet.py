"""The video UNet (factorized space-time, per-frame time): with its temporal blocks at
their zero start it is the image UNet run frame by frame at each frame's own time; the
temporal blocks mix frames in order; no weight depends on the frame count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.contract import Modes
from diffusion.nn.attention import MAPS
from diffusion.nn.unet import UNet
from tests.nn.test_unet import TINY, _randomize_zero_layers

B, F = 2, 3


def _video_and_times():
    x = jax.random.normal(jax.random.PRNGKey(1), (B, F, 8, 8, 1))
    t = jax.random.uniform(jax.random.PRNGKey(2), (B, F))
    return x, t


def _params(model, x, t, key=3, randomize_temporal=False):
    p = model.init(jax.random.PRNGKey(0), x, t, label=jnp.zeros((x.shape[0],), jnp.int32))["params"]
    image_part = {k: v for k, v in p.items() if "temporal" not in k}
    image_part = _randomize_zero_layers(image_part, jax.random.PRNGKey(key))
    temporal = {k: v for k, v in p.items() if "temporal" in k}
    if randomize_temporal:
        temporal = _randomize_zero_layers(temporal, jax.random.PRNGKey(key + 1))
    return {**image_part, **temporal}, image_part


def test_fresh_temporal_blocks_give_the_image_unet_per_frame_at_its_own_time():
    video, image = UNet(**TINY, num_classes=10, temporal=True), UNet(**TINY, num_classes=10)
    x, t = _video_and_times()
    label = jnp.array([3, 7])
    p, p_image = _params(video, x, t)
    assert any("temporal" in k for k in p) and set(p_image) < set(p)
    out = video.apply({"params": p}, x, t, label=label)
    assert out.shape == (B, F, 8, 8, 1)
    for f in range(F):
        ref = image.apply({"params": p_image}, x[:, f], t[:, f], label=label)
        np.testing.assert_allclose(np.asarray(out[:, f]), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_a_shared_time_equals_the_same_time_given_per_frame():
    video = UNet(**TINY, temporal=True)
    x, _ = _video_and_times()
    t_b = jnp.array([0.2, 0.7])
    p, _ = _params(video, x, jnp.zeros((B, F)), randomize_temporal=True)
    shared = video.apply({"params": p}, x, t_b)
    per_frame = video.apply({"params": p}, x, jnp.repeat(t_b[:, None], F, axis=1))
    np.testing.assert_array_equal(np.asarray(shared), np.asarray(per_frame))
    scalar = video.apply({"params": p}, x, jnp.asarray(0.2))
    np.testing.assert_array_equal(np.asarray(scalar[0]), np.asarray(shared[0]))


def test_temporal_blocks_mix_frames_and_know_their_order():
    video = UNet(**TINY, temporal=True)
    x, t = _video_and_times()
    p, _ = _params(video, x, t, randomize_temporal=True)
    out = np.asarray(video.apply({"params": p}, x, t))
    changed = np.asarray(video.apply({"params": p}, x.at[:, 2].add(1.0), t))
    assert np.abs(changed[:, 0] - out[:, 0]).max() > 1e-3  # frame 2's content reaches frame 0
    same = jnp.full((B, F), 0.5)
    still = jnp.repeat(x[:, :1], F, axis=1)  # every frame alike: only the frame position differs
    frames = np.asarray(video.apply({"params": p}, still, same))
    assert np.abs(frames[:, 0] - frames[:, 1]).max() > 1e-4


def test_the_same_weights_run_on_any_frame_count_and_samples_stay_apart():
    video = UNet(**TINY, temporal=True)
    x, t = _video_and_times()
    p, _ = _params(video, x, t, randomize_temporal=True)
    longer = jax.random.normal(jax.random.PRNGKey(5), (1, 5, 8, 8, 1))
    assert video.apply({"params": p}, longer, jnp.full((1, 5), 0.3)).shape == (1, 5, 8, 8, 1)
    one = video.apply({"params": p}, x[:1], t[:1])
    both = video.apply({"params": p}, x, t)
    np.testing.assert_allclose(np.asarray(one[0]), np.asarray(both[0]), rtol=1e-5, atol=1e-5)


def test_attention_reuse_covers_the_temporal_maps():
    video = UNet(**TINY, temporal=True)
    x, t = _video_and_times()
    p, _ = _params(video, x, t, randomize_temporal=True)
    out, state = video.apply({"params": p}, x, t, modes=Modes(attention="store"), mutable=[MAPS])
    temporal_maps = {k: v for k, v in state[MAPS].items() if "temporal" in k}
    assert temporal_maps and jax.tree.leaves(temporal_maps)[0].shape[-2:] == (F, F)
    reused = video.apply({"params": p, MAPS: state[MAPS]}, x, t, modes=Modes(attention="reuse"))
    np.testing.assert_allclose(np.asarray(reused), np.asarray(out), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape, t_shape, match", [
    ((B, 8, 8, 1), (B,), "a video UNet takes x \\[B, F, H, W, C\\]"),
    ((B, F, 8, 8, 1), (B, F + 1), "t of shape"),
])
def test_bad_shapes_are_named(shape, t_shape, match):
    video = UNet(**TINY, temporal=True)
    with pytest.raises(ValueError, match=match):
        video.init(jax.random.PRNGKey(0), jnp.zeros(shape), jnp.zeros(t_shape))


def test_an_image_unet_refuses_a_video():
    with pytest.raises(ValueError, match="config.model.temporal=True"):
        UNet(**TINY).init(jax.random.PRNGKey(0), jnp.zeros((B, F, 8, 8, 1)), jnp.zeros((B,)))
