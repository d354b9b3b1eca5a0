"""The bundled digits, the data registry and the checkpointable pipeline."""

import numpy as np
import pytest
from sklearn.datasets import load_digits as sk_load_digits

from diffusion.data import make_source
from diffusion.data.digits import NUM_TRAIN, _raw, load_digits, to_8x8
from diffusion.data.pipeline import make_train_iterator


def test_bundled_file_equals_scikit_learn_digits():
    images, labels, _ = _raw()
    sk = sk_load_digits()
    np.testing.assert_array_equal(images, sk.images.astype(np.uint8))
    np.testing.assert_array_equal(labels, sk.target)


def test_split_is_fixed_disjoint_and_in_range():
    tr, ytr = load_digits("train")
    he, yhe = load_digits("heldout")
    assert tr.shape == (NUM_TRAIN, 8, 8, 1) and he.shape == (1797 - NUM_TRAIN, 8, 8, 1)
    assert tr.min() == -1.0 and tr.max() == 1.0 and tr.dtype == np.float32
    _, _, order = _raw()
    assert set(order[:NUM_TRAIN]).isdisjoint(order[NUM_TRAIN:])
    np.testing.assert_array_equal(order[:5], np.random.default_rng(0).permutation(1797)[:5])
    assert set(np.unique(ytr)) == set(range(10)) and set(np.unique(yhe)) == set(range(10))


def test_upsampling_keeps_levels_and_pools_back():
    x8, _ = load_digits("heldout", 8)
    x16, _ = load_digits("heldout", 16)
    assert x16.shape[1:] == (16, 16, 1)
    np.testing.assert_array_equal(to_8x8(x16), x8)
    with pytest.raises(ValueError, match="multiple of 8"):
        load_digits("train", 12)


def test_thick_digits_are_the_digits_grey_dilated_by_a_plus():
    from diffusion.data.digits import thicken

    x = np.zeros((1, 8, 8), np.int64)
    x[0, 0, 0], x[0, 4, 4], x[0, 4, 5] = 16, 8, 3
    out = thicken(x)[0]
    want = np.zeros((8, 8), np.int64)
    want[0, 0] = want[1, 0] = want[0, 1] = 16
    for i, j in [(4, 4), (3, 4), (5, 4), (4, 3), (4, 5)]:
        want[i, j] = 8
    want[3, 5] = want[5, 5] = want[4, 6] = 3
    np.testing.assert_array_equal(out, want)
    plain, labels = load_digits("heldout")
    source, info = make_source("digits_thick", "heldout")
    assert info.image_shape == (8, 8, 1) and info.num_classes == 10
    item = source[3]
    np.testing.assert_array_equal(item["label"], labels[3])
    assert np.all(item["image"] >= plain[3]) and item["image"].mean() > plain[3].mean()


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match="available: digits, digits_thick, scenes, moving_digits, synthetic, cifar10"):
        make_source("imagenet64", "train")
    with pytest.raises(ValueError, match="train, heldout, all"):
        load_digits("test")


def test_synthetic_source_is_deterministic():
    src, info = make_source("synthetic", "train", resolution=16)
    assert info.image_shape == (16, 16, 3)
    np.testing.assert_array_equal(src[7]["image"], src[7]["image"])
    assert not np.array_equal(src[7]["image"], src[8]["image"])


def test_iterator_resumes_exactly_and_reshuffles_each_epoch():
    src, _ = make_source("digits", "train")
    it = make_train_iterator(src, 64, seed=3, process_index=0, process_count=1)
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = [next(it)["label"] for _ in range(30)]  # crosses an epoch boundary (1437 / 64)
    it2 = make_train_iterator(src, 64, seed=3, process_index=0, process_count=1)
    it2.set_state(state)
    for e, got in zip(expected, (next(it2)["label"] for _ in range(30))):
        np.testing.assert_array_equal(e, got)
    # two epochs see every image once each, in different orders
    it3 = make_train_iterator(src, 1, seed=0, process_index=0, process_count=1)
    ep1 = [int(next(it3)["label"][0]) for _ in range(len(src))]
    ep2 = [int(next(it3)["label"][0]) for _ in range(len(src))]
    assert sorted(ep1) == sorted(ep2) and ep1 != ep2


def test_processes_read_their_pieces_of_the_one_global_order():
    """P processes read disjoint pieces that assemble, in process order, into exactly the
    1-process batches (flips included); the position after k steps is the same everywhere."""
    src, _ = make_source("synthetic", "train", resolution=8)
    src.size = 40
    whole = make_train_iterator(src, 12, seed=0, random_flip=True, process_index=0, process_count=1)
    for count in (2, 3):
        parts = [make_train_iterator(src, 12, seed=0, random_flip=True, process_index=p, process_count=count)
                 for p in range(count)]
        for step in range(7):  # past an epoch boundary (40 / 12)
            pieces = [next(it) for it in parts]
            want = next(whole) if count == 2 else None
            if want is not None:
                for key in want:
                    np.testing.assert_array_equal(np.concatenate([b[key] for b in pieces]), want[key])
            keys = [{tuple(np.round(x.ravel()[:4], 5)) for x in b["image"]} for b in pieces]
            assert all(len(k) == 12 // count for k in keys) and len(set().union(*keys)) == 12
        assert [it.get_state() for it in parts] == [{"next_index": 7}] * count
    resumed = make_train_iterator(src, 12, seed=0, random_flip=True, process_index=1, process_count=2)
    resumed.set_state({"next_index": 7})  # a 2-process run resuming a 1-process checkpoint's position
    nxt = next(whole)
    np.testing.assert_array_equal(next(resumed)["image"], nxt["image"][6:])


def test_scenes_and_none_sources():
    source, info = make_source("scenes", "heldout")
    assert info.image_shape == (32, 32, 1) and len(source) == info.size == 2000
    assert isinstance(source[0]["caption"], np.str_)
    with pytest.raises(ValueError, match="config.data.resolution=32"):
        make_source("scenes", "train", resolution=16)
    with pytest.raises(ValueError, match="unknown scenes split 'test'"):
        make_source("scenes", "test")
    empty, info = make_source("none", "train", resolution=64)
    assert len(empty) == 0 and info.image_shape == (64, 64, 3) and info.num_classes is None
