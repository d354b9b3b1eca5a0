"""The moving-digits generator: deterministic, prefix-stable in the frame count, its
motion a reflection off the walls, its held-out split drawn from held-out glyphs only."""

import numpy as np
import pytest

from diffusion.data import digits, moving_digits as md


def _stepwise(start, velocity, frames, limit):
    """Reflection simulated one frame at a time (the reference for :func:`md.bounce`)."""
    p, v, out = start, velocity, []
    for _ in range(frames):
        out.append(p)
        for _ in range(abs(v)):  # one pixel at a time, turning at a wall
            if not 0 <= p + np.sign(v) <= limit:
                v = -v
            p += np.sign(v)
    return np.array(out)


@pytest.mark.parametrize("start", [0, 3, 8])
@pytest.mark.parametrize("velocity", md.SPEEDS)
def test_bounce_matches_a_stepwise_reflection(start, velocity):
    assert np.array_equal(md.bounce(start, velocity, 40, 8), _stepwise(start, velocity, 40, 8))


def test_a_video_is_a_pure_function_of_seed_split_and_index_and_prefix_stable():
    short, long = md.MovingDigitsSource("train", 50, 8), md.MovingDigitsSource("train", 50, 32)
    again = md.MovingDigitsSource("train", 50, 8)
    for i in (0, 17, 49):
        assert np.array_equal(short[i]["image"], again[i]["image"])
        assert np.array_equal(long[i]["image"][:8], short[i]["image"])
        assert np.array_equal(long[i]["digits"], short[i]["digits"])
    other = md.MovingDigitsSource("train", 50, 8, seed=1)
    assert any(not np.array_equal(short[i]["image"], other[i]["image"]) for i in range(5))


@pytest.mark.parametrize("split", md.SPLITS)
def test_frames_are_the_split_glyphs_at_their_bounced_positions(split):
    """Each video draws glyphs of its own digits split (held-out videos: held-out glyphs)."""
    images, labels = digits.load_digits(split)
    levels = (images[..., 0] + 1) / 2
    for i in range(30):
        movers = md.make_movers(split, i)
        video = md.render(movers, split, 20)
        assert video.shape == (20, 16, 16, 1) and video.min() >= -1 and video.max() <= 1
        expected = np.zeros((20, 16, 16), np.float32)
        for m in movers:
            assert labels[m.glyph] == m.digit
            xs, ys = _stepwise(m.x, m.vx, 20, 8), _stepwise(m.y, m.vy, 20, 8)
            for f in range(20):
                expected[f, ys[f]:ys[f] + 8, xs[f]:xs[f] + 8] = np.maximum(
                    expected[f, ys[f]:ys[f] + 8, xs[f]:xs[f] + 8], levels[m.glyph])
        np.testing.assert_array_equal(video[..., 0], 2 * expected - 1)


def test_labels_state_the_digits_and_one_or_two_digits_appear():
    src = md.MovingDigitsSource("train", 400, 4)
    counts = {1: 0, 2: 0}
    for i in range(400):
        item = src[i]
        movers = md.make_movers("train", i)
        counts[len(movers)] += 1
        assert item["label"] == movers[0].digit and list(item["digits"][:len(movers)]) == [m.digit for m in movers]
        assert (item["digits"][len(movers):] == -1).all()
    assert min(counts.values()) > 150


@pytest.mark.parametrize("kwargs, match", [
    (dict(split="test", size=10, frames=8), "unknown moving-digits split 'test'"),
    (dict(split="train", size=0, frames=8), "size >= 1"),
    (dict(split="train", size=10, frames=0), "frames >= 1"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        md.MovingDigitsSource(**kwargs)
