"""The digit-scenes generator: deterministic, its captions true of its images, and its
held-out splits really held out."""

import numpy as np
import pytest

from diffusion.data import digits, scenes


def test_a_scene_is_a_pure_function_of_seed_split_and_index():
    a, b = scenes.ScenesSource("train", 100), scenes.ScenesSource("train", 100)
    for i in (0, 7, 99):
        x, y = a[i], b[i]
        assert np.array_equal(x["image"], y["image"]) and x["caption"] == y["caption"]
    other = scenes.ScenesSource("train", 100, seed=1)
    assert any(str(a[i]["caption"]) != str(other[i]["caption"]) for i in range(10))


def test_captions_round_trip_through_the_parser_and_state_the_truth():
    for split in scenes.SPLITS:
        for i in range(300):
            scene = scenes.make_scene(split, i)
            text = scene.caption.text()
            assert scenes.parse_caption(text) == scene.caption
            for m, o in zip(scene.caption.mentions, scene.objects, strict=True):
                assert m.digit == o.digit and m.size in (None, o.size) and m.stroke in (None, o.stroke)
            if scene.caption.relation == "left":
                assert scene.objects[0].x + scene.objects[0].side <= scene.objects[1].x
            if scene.caption.relation == "above":
                assert scene.objects[0].y + scene.objects[0].side <= scene.objects[1].y
            if scene.caption.relation == "row":
                xs = [o.x for o in scene.objects]
                assert all(xs[k] + 10 <= xs[k + 1] for k in range(2))
            for o in scene.objects:
                assert 0 <= o.x <= 32 - o.side and 0 <= o.y <= 32 - o.side


def test_parse_caption_refuses_text_outside_the_grammar():
    for bad in ("a 12", "two 3s", "a huge 3", "a 3 below a 4", ""):
        with pytest.raises(ValueError, match="not in the digit-scenes grammar"):
            scenes.parse_caption(bad)


def test_held_out_pairs_and_glyphs_never_reach_training():
    train_pairs, novel_pairs = set(), set()
    for i in range(3000):
        s = scenes.make_scene("train", i)
        if len(s.objects) == 2:
            train_pairs.add((s.objects[0].digit, s.objects[1].digit))
    for i in range(600):
        s = scenes.make_scene("novel", i)
        if len(s.objects) == 2:
            novel_pairs.add((s.objects[0].digit, s.objects[1].digit))
    assert len(scenes.HELDOUT_PAIRS) == 10 and not train_pairs & scenes.HELDOUT_PAIRS
    assert len(train_pairs) == 90 and novel_pairs == set(scenes.HELDOUT_PAIRS)
    # glyph indices refer to different digit splits: the held-out split's images are not train images
    train_imgs, _ = digits.load_digits("train")
    held_imgs, _ = digits.load_digits("heldout")
    s = scenes.make_scene("heldout", 3)
    glyph = held_imgs[s.objects[0].glyph]
    assert not np.any(np.all(train_imgs == glyph, axis=(1, 2, 3)))


def test_rendered_ink_lies_in_the_boxes_and_thick_has_more_ink():
    for i in range(50):
        s = scenes.make_scene("train", i)
        img = scenes.render(s, "train")[..., 0]
        assert img.shape == (32, 32) and img.min() >= -1.0 and img.max() <= 1.0
        inside = np.zeros((32, 32), bool)
        for o in s.objects:
            inside[o.y:o.y + o.side, o.x:o.x + o.side] = True
            ink = img[o.y:o.y + o.side, o.x:o.x + o.side] + 1.0
            assert ink.sum() > 4.0  # every stated digit is drawn
        assert np.all(img[~inside] == -1.0)
    for size in scenes.SIZES:
        thin = scenes.render_glyph("train", 0, size, "thin")
        thick = scenes.render_glyph("train", 0, size, "thick")
        assert np.all(thick >= thin) and thick.sum() > 1.3 * thin.sum()


def test_source_items_and_bad_arguments():
    item = scenes.ScenesSource("heldout", 10)[4]
    s = scenes.make_scene("heldout", 4)
    assert np.array_equal(item["image"], scenes.render(s, "heldout")) and item["caption"] == s.caption.text()
    t = scenes.truth(s)
    n = len(s.objects)
    assert list(t["digit"][:n]) == [o.digit for o in s.objects] and np.all(t["digit"][n:] == -1)
    assert np.allclose(t["center"][:n], [o.center for o in s.objects])
    with pytest.raises(ValueError, match="unknown scenes split"):
        scenes.ScenesSource("test", 10)
    with pytest.raises(ValueError, match="size >= 1"):
        scenes.ScenesSource("train", 0)
    with pytest.raises(IndexError):
        scenes.ScenesSource("train", 10)[10]
