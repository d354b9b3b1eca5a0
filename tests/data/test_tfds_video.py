"""TFDS video datasets through the registered source and the checkpointable pipeline
(``tfds.testing.mock_data``: the builder's real feature spec, random contents)."""

import numpy as np
import pytest

from diffusion.data import make_source
from diffusion.data.pipeline import RandomFlip, make_train_iterator

tfds = pytest.importorskip("tensorflow_datasets")
BAIR = "tfds:bair_robot_pushing_small"  # a Sequence of 30 64x64x3 frames: image_main and image_aux1


@pytest.fixture(scope="module")
def mock():
    with tfds.testing.mock_data(num_examples=6):
        yield


def test_a_tfds_video_is_its_first_frames_in_minus_one_to_one(mock):
    src, info = make_source(BAIR, "train", frames=5, video_key="image_main")
    raw = tfds.data_source("bair_robot_pushing_small", split="train", download=False)
    assert (info.image_shape, info.num_frames, info.num_classes, info.size) == ((64, 64, 3), 5, None, 6)
    for i in (0, 5):
        want = np.asarray(raw[i]["image_main"][:5], np.float64) / 127.5 - 1.0
        np.testing.assert_allclose(src[i]["image"], want, atol=1e-6)
        assert src[i]["image"].dtype == np.float32 and not np.allclose(src[i]["image"], src[(i + 1) % 6]["image"])
    aux = make_source(BAIR, "train", frames=5, video_key="image_aux1")[0]
    assert not np.allclose(aux[0]["image"], src[0]["image"])


def test_the_video_pipeline_batches_resumes_exactly_and_flips_width(mock):
    src, _ = make_source(BAIR, "train", frames=3, video_key="image_main")
    it = make_train_iterator(src, 2, seed=1, random_flip=True, process_index=0, process_count=1)
    next(it)
    state = it.get_state()
    expected = [next(it)["image"] for _ in range(4)]  # crosses an epoch boundary (6 / 2)
    assert expected[0].shape == (2, 3, 64, 64, 3)
    it2 = make_train_iterator(src, 2, seed=1, random_flip=True, process_index=0, process_count=1)
    it2.set_state(state)
    for e in expected:
        np.testing.assert_array_equal(e, next(it2)["image"])
    video = np.arange(2 * 3 * 4 * 1, dtype=np.float32).reshape(2, 3, 4, 1)  # [F, H, W, C]
    flips = [RandomFlip().random_map({"image": video}, np.random.default_rng(s))["image"] for s in range(8)]
    assert any(np.array_equal(f, video[:, :, ::-1]) for f in flips)  # the W axis, every frame alike
    assert all(np.array_equal(f, video) or np.array_equal(f, video[:, :, ::-1]) for f in flips)


@pytest.mark.parametrize("kwargs, match", [
    ({"frames": 31, "video_key": "image_main"}, "hold 30 frames: lower it"),
    ({"frames": 4}, r"several videos \(image_aux1, image_main\): pick one with config.data.video_key"),
    ({"frames": 4, "video_key": "action"}, "no such video; its videos: image_aux1, image_main"),
    ({}, r"no image feature: it holds videos \(image_aux1, image_main\): set config.data.frames"),
    ({"video_key": "image_main"}, "set config.data.frames too"),
    ({"frames": 1, "video_key": "image_main"}, "integer >= 2"),
    ({"frames": 0, "video_key": "image_main"}, "integer >= 2"), ({"frames": -3, "video_key": "image_main"}, "integer >= 2"),
    ({"frames": float("nan"), "video_key": "image_main"}, "integer >= 2"),
])
def test_bad_video_settings_are_named(mock, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_source(BAIR, "train", **kwargs)


def test_frames_on_a_tfds_image_dataset_is_refused(mock):
    with pytest.raises(ValueError, match="holds no uint8 .T, H, W, C. video feature: leave config.data.frames unset"):
        make_source("cifar10", "train", frames=4)
    assert make_source("cifar10", "train")[1].num_frames is None


