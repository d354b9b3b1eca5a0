"""Caption accuracy on digit scenes: the matching rule on hand-made detections, and the
trained parser's separation of real scenes from wrong captions, blur and noise."""

import jax
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from diffusion.data import scenes
from diffusion.metrics.caption_accuracy import caption_holds, score_scenes
from diffusion.metrics.scene_parser import Detection


def det(digit, x, y, size="small", stroke="thin"):
    return Detection(digit, size, stroke, (x, y))


def test_every_statement_must_hold():
    cap = scenes.parse_caption("a small 3 to the left of a thick 7")
    assert caption_holds(cap, [det(7, 20, 5, stroke="thick"), det(3, 4, 25)])  # any order of detections
    assert not caption_holds(cap, [det(7, 2, 5, stroke="thick"), det(3, 20, 25)])  # 7 is left of 3
    assert not caption_holds(cap, [det(3, 4, 25), det(7, 20, 5)])  # the 7 is thin
    assert not caption_holds(cap, [det(3, 4, 25, size="large"), det(7, 20, 5, stroke="thick")])  # large 3
    assert not caption_holds(cap, [det(3, 4, 25), det(7, 20, 5, stroke="thick"), det(1, 28, 28)])  # extra digit
    assert not caption_holds(cap, [det(3, 4, 25)])  # missing digit
    above = scenes.parse_caption("a 2 above a 2")
    assert caption_holds(above, [det(2, 5, 20), det(2, 25, 4)]) and not caption_holds(above, [det(2, 5, 20)])
    row = scenes.parse_caption("a 1, a 4 and a 9 from left to right")
    assert caption_holds(row, [det(9, 28, 3), det(1, 4, 20), det(4, 15, 9)])
    assert not caption_holds(row, [det(4, 28, 3), det(1, 4, 20), det(9, 15, 9)])
    assert caption_holds(scenes.parse_caption("a 5"), [det(5, 16, 16, "large", "thick")])  # unstated: anything


@pytest.fixture(scope="module")
def heldout():
    src = scenes.ScenesSource("heldout", 600)
    items = [src[i] for i in range(600)]
    return np.stack([it["image"] for it in items]), [str(it["caption"]) for it in items]


@pytest.mark.slow
def test_the_parser_separates_real_scenes_from_wrong_captions_blur_and_noise(heldout):
    x, captions = heldout
    real = score_scenes(x, captions)
    assert real["caption_accuracy"] > 0.8 and real["scenes_fd"] < 3.0
    shuffled = score_scenes(x, list(np.random.default_rng(0).permutation(captions)))
    assert shuffled["caption_accuracy"] < 0.05 and shuffled["scenes_fd"] == pytest.approx(real["scenes_fd"])
    blurred = score_scenes(gaussian_filter(x, sigma=(0, 1, 1, 0)), captions)
    assert blurred["scenes_fd"] > 10 * real["scenes_fd"] + 5 and blurred["caption_accuracy"] < real["caption_accuracy"] - 0.2
    noise = score_scenes(np.random.default_rng(1).uniform(-1, 1, x.shape).astype(np.float32), captions)
    assert noise["scenes_fd"] > 100 and noise["caption_accuracy"] < 0.02
    with pytest.raises(ValueError, match="not in the digit-scenes grammar"):
        score_scenes(x[:2], ["a 3", "three"])
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        score_scenes(x[:2], ["a 3"])


def test_the_shipped_parser_is_checked_and_training_is_deterministic(tmp_path, monkeypatch):
    """The shipped params load only when their hash matches (a damaged file is named, never
    used); training (here a small recipe) gives bit-identical params twice, which is what
    lets the shipped file stand for the recipe."""
    from diffusion.metrics import scene_parser
    from diffusion.metrics.param_cache import cache_path, cached_params, sha256_of

    assert sha256_of(scene_parser.SHIPPED) == scene_parser.SHIPPED_SHA256
    assert scene_parser.SHIPPED.name == cache_path("scene_parser", scene_parser.RECIPE).name
    damaged = tmp_path / scene_parser.SHIPPED.name
    data = bytearray(scene_parser.SHIPPED.read_bytes())
    data[-100] ^= 1
    damaged.write_bytes(bytes(data))
    monkeypatch.setenv("KAIROS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=f"{damaged.name} does not match its recorded SHA-256"):
        cached_params("scene_parser", scene_parser.RECIPE, lambda: pytest.fail("must not train"),
                      {damaged: scene_parser.SHIPPED_SHA256})
    for key, value in dict(scenes=256, epochs=2, width=8, features=16).items():
        monkeypatch.setitem(scene_parser.RECIPE, key, value)
    a, b = scene_parser.train_parser(), scene_parser.train_parser()
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
