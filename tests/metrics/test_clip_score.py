"""CLIP score against transformers: a tiny random ``CLIPModel`` (with a BPE tokenizer trained
here, offline) and a ``CLIPImageProcessor`` saved to a folder and read by ``load_clip``. The
vision tower matches ``get_image_features`` to float32 rounding, our preprocessing matches the
processor (PIL backend) bit for bit, text embeddings match ``get_text_features`` of
torchmetrics' tokens (a prompt longer than 77 tokens cut as it cuts them), and the score is
``100 * max(cos, 0)`` of transformers' embeddings, computed in float64."""

import dataclasses
import shutil

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from diffusion.convert.clip_vision import convert_clip_model, convert_clip_vision  # noqa: E402
from diffusion.convert.invert import invert  # noqa: E402
from diffusion.convert.tensors import ConversionError  # noqa: E402
from diffusion.metrics.clip_score import (ImageProcessing, clip_cosines, clip_score, clip_scores,  # noqa: E402
                                          image_embeddings, load_clip, preprocess, text_embeddings, token_ids)
from diffusion.nn.clip_vision import CLIPVisionConfig, CLIPVisionEncoder  # noqa: E402

CORPUS = ["a photo of a cat", "a painting of a dog", "an astronaut riding a horse", "a red car on a street",
          "two birds above a lake", "a small 3 to the left of a thick 7"] * 4
PROMPTS = ["a photo of a cat", "a painting of a dog", "an astronaut riding a horse",
           " ".join(["a red car on a street"] * 20)]  # 121 tokens: cut to 77, the end token with them
VISION = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32,
              patch_size=8)


def _tokenizer(folder):
    from tests.clip_tokenizer import train_clip_tokenizer

    return train_clip_tokenizer(folder, CORPUS, vocab_size=100, max_length=77)


def _jitter(model, seed, scale=0.2):
    """Every weight moved off its init (LayerNorms off 1 and 0), so each must land in its place."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def _processor(**kw):
    square = {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}
    return transformers.CLIPImageProcessorPil(**{**square, **kw})


def _images(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _features(out):
    """transformers 5 returns an output whose ``pooler_output`` is the projection; 4.x a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _ref_pixels(processor, images, **kw):
    """The processor as torchmetrics calls it: a list of ``[3, H, W]`` tensors."""
    chw = [torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))) for x in images]
    return processor(images=chw, return_tensors="pt", **kw)["pixel_values"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``(folder, torch model, processor, tokenizer, load_clip(folder))``."""
    root = tmp_path_factory.mktemp("clip")
    tok = _tokenizer(root / "bpe")
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(VISION, hidden_act="gelu"), projection_dim=16)  # text: quick_gelu; vision: exact gelu
    model = _jitter(transformers.CLIPModel(config), 1)
    folder = root / "clip"
    model.save_pretrained(folder)
    processor = _processor()
    processor.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, model, processor, tok, load_clip(folder)


def _vision_with_projection():
    """A ``CLIPVisionModelWithProjection`` (quick_gelu, the other activation)."""
    torch.manual_seed(3)
    return _jitter(transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**VISION,
                                                                                              projection_dim=16)), 4)


@pytest.mark.parametrize("which", ["clip_model_gelu", "vision_with_projection_quick_gelu"])
def test_vision_tower_matches_get_image_features(saved, which):
    pixels = np.random.default_rng(5).normal(size=(3, 3, 32, 32)).astype(np.float32)  # NCHW, as the processor's
    if which == "clip_model_gelu":
        _, model, _, _, clip = saved
        module, params = clip.vision, clip.params["vision"]
        with torch.no_grad():
            want = _features(model.get_image_features(torch.from_numpy(pixels))).numpy()
    else:
        model = _vision_with_projection()
        config = CLIPVisionConfig.from_dict(model.config.to_dict())
        assert (config.hidden_act, config.projection_dim) == ("quick_gelu", 16)
        module = CLIPVisionEncoder(config)
        params = convert_clip_vision({k: v.numpy() for k, v in model.state_dict().items()}, config, which)
        with torch.no_grad():
            want = model(pixel_values=torch.from_numpy(pixels)).image_embeds.numpy()
    got = np.asarray(jax.jit(module.apply)({"params": params}, pixels.transpose(0, 2, 3, 1)))
    assert got.shape == want.shape == (3, 16)
    scale = np.abs(want).max()
    assert 0.1 < scale < 100, scale  # the random tower neither vanishes nor explodes
    err = np.abs(got - want).max()
    print(f"{which}: max |diff| {err:.2e}, max |embedding| {scale:.2f}")
    assert err <= 2e-6 * scale, f"max |diff| {err:.2e} vs max |embedding| {scale:.2f}"


@pytest.mark.parametrize("size,crop", [({"shortest_edge": 32}, 32), ({"shortest_edge": 20}, 32),
                                       ({"height": 30, "width": 36}, 32), ({"shortest_edge": 45}, 27)])
def test_preprocess_matches_clip_image_processor(size, crop):
    """Bit for bit, uint8 and float input; resize up and down, crops that pad (20 < 32) and
    both at once (height padded, width cropped); 40x48 and 48x40 images."""
    processor = _processor(size=size, crop_size={"height": crop, "width": crop})
    spec = ImageProcessing.from_dict(processor.to_dict())
    for shape in [(2, 40, 48, 3), (1, 48, 40, 3)]:
        images = _images(shape)
        want = _ref_pixels(processor, images).numpy().transpose(0, 2, 3, 1)
        got = preprocess(images, spec)
        assert got.dtype == np.float32 and got.shape == want.shape == (shape[0], crop, crop, 3)
        np.testing.assert_array_equal(got, want)
        # float in [0, 1]: to uint8 as transformers' to_pil_image does; its own processor, told the
        # pixels are already rescaled, gives the same numbers (with do_rescale it would divide by 255 twice)
        floats = np.random.default_rng(1).uniform(size=shape).astype(np.float32)
        want = _ref_pixels(processor, floats, do_rescale=False).numpy().transpose(0, 2, 3, 1)
        np.testing.assert_array_equal(preprocess(floats, spec), want)


def test_legacy_processor_config():
    """Old ``preprocessor_config.json`` files (openai/clip-vit-*) give ``size`` and ``crop_size`` as ints."""
    assert ImageProcessing.from_dict({"size": 224, "crop_size": 224, "resample": 3}) == ImageProcessing()
    assert ImageProcessing.from_dict(_processor().to_dict()) == ImageProcessing(shortest_edge=32, crop_size=(32, 32))


def test_whole_pipeline_matches_transformers(saved):
    """uint8 images of another size (40x48) -> our preprocessing + tower == processor + model."""
    _, model, processor, _, clip = saved
    images = _images((3, 40, 48, 3), 7)
    with torch.no_grad():
        want = _features(model.get_image_features(_ref_pixels(processor, images))).numpy()
    got = image_embeddings(clip, images, batch_size=2)  # 2 batches, the last padded
    err = np.abs(got - want).max()
    print(f"pipeline: max |diff| {err:.2e}, max |embedding| {np.abs(want).max():.2f}")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def _torchmetrics_text(model, tok, prompts):
    """torchmetrics' ``_get_features(modality="text")``: padding=True, then the first
    ``max_position_embeddings`` tokens and mask."""
    enc = tok(prompts, padding=True, return_tensors="pt")
    n = model.config.text_config.max_position_embeddings
    with torch.no_grad():
        return _features(model.get_text_features(enc["input_ids"][:, :n], enc["attention_mask"][:, :n]))


def test_text_embeddings_match_get_text_features(saved):
    _, model, _, tok, clip = saved
    assert len(tok(PROMPTS[-1])["input_ids"]) > 77  # the long prompt really is cut
    ids = token_ids(clip, PROMPTS)
    assert ids.shape == (4, 77) and tok.eos_token_id not in ids[-1]
    want = _torchmetrics_text(model, tok, PROMPTS).numpy()
    got = text_embeddings(clip, PROMPTS)
    err = np.abs(got - want).max()
    print(f"text: max |diff| {err:.2e}, max |embedding| {np.abs(want).max():.2f}")
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_clip_score_is_the_clamped_cosine_of_transformers_embeddings(saved):
    """Every image with every prompt (16 pairs), scored by the model and by a copy whose
    ``visual_projection`` is negated (image embeddings -E_I, cosines -cos): whatever the
    random weights and the trained vocabulary give, each pair is negative under one of the two
    and must score 0 there. The reference is transformers' embeddings in float64."""
    _, model, processor, tok, clip = saved
    images = _images((4, 40, 48, 3), 11)
    pair_images = np.repeat(images, 4, axis=0)
    pair_prompts = PROMPTS * 4
    double = model.double()
    try:
        with torch.no_grad():
            img = _features(double.get_image_features(_ref_pixels(processor, pair_images).double()))
            txt = _torchmetrics_text(double, tok, pair_prompts)
    finally:
        model.float()
    cos = 100 * torch.nn.functional.cosine_similarity(img, txt, dim=-1).numpy()
    assert (np.abs(cos) > 0.1).all(), cos
    vision = clip.params["vision"]
    flipped = dataclasses.replace(clip, params={**clip.params, "vision": {
        **vision, "visual_projection": {"kernel": -vision["visual_projection"]["kernel"]}}})
    for name, scorer, sign in [("model", clip, 1), ("negated projection", flipped, -1)]:
        want = np.maximum(sign * cos, 0)
        raw = clip_cosines(scorer, pair_images, pair_prompts)
        got = clip_scores(scorer, pair_images, pair_prompts)
        print(f"{name}: score max |diff| {np.abs(got - want).max():.2e}; 100 cos {np.round(sign * cos, 1)}")
        assert got.dtype == np.float64 and got.shape == (16,)
        np.testing.assert_allclose(raw, sign * cos, rtol=0, atol=1e-3)
        assert (got[sign * cos < 0] == 0).all() and (got >= 0).all()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-3)
        assert clip_score(scorer, pair_images, pair_prompts) == pytest.approx(want.mean(), abs=1e-3)


def test_converters_only_move_numbers_and_name_bad_tensors(saved):
    folder, model, _, _, clip = saved
    tensors = {k: v.numpy() for k, v in model.state_dict().items()}
    vision = {k: v for k, v in tensors.items() if k.startswith("vision_model.") or k.startswith("visual_projection.")}
    config = clip.config.vision
    back = invert(lambda t: convert_clip_vision(t, config, "probe"), {k: v.shape for k, v in vision.items()},
                  clip.params["vision"], "probe")
    assert sorted(back) == sorted(k for k in vision if not k.endswith("position_ids"))
    for k, v in back.items():
        np.testing.assert_array_equal(v, vision[k], err_msg=k)
    cases = {"missing": ({k: v for k, v in tensors.items() if k != "vision_model.post_layernorm.weight"},
                         "missing tensor 'vision_model.post_layernorm.weight'"),
             "unexpected": ({**tensors, "vision_model.extra.weight": np.zeros(3)}, "vision_model.extra.weight"),
             "mis-shaped": ({**tensors, "visual_projection.weight": np.zeros((16, 31))}, "visual_projection")}
    for name, (bad, needle) in cases.items():
        with pytest.raises(ConversionError) as e:
            convert_clip_model(bad, clip.config, str(folder))
        assert needle in str(e.value) and "\n" not in str(e.value), (name, str(e.value))


def _copy_without(folder, dest, name):
    shutil.copytree(folder, dest)
    (dest / name).unlink()
    return dest


def test_bad_inputs_are_one_line_errors(saved, tmp_path):
    folder, _, _, _, clip = saved
    images = _images((2, 40, 48, 3))
    cases = [
        (lambda: load_clip(_copy_without(folder, tmp_path / "a", "preprocessor_config.json")), FileNotFoundError,
         "has no preprocessor_config.json"),
        (lambda: load_clip(_copy_without(folder, tmp_path / "b", "model.safetensors")), ConversionError,
         "no weights in"),
        (lambda: load_clip(_copy_without(folder, tmp_path / "c", "config.json")), ConversionError,
         "has no config.json"),
        (lambda: load_clip(tmp_path / "nowhere"), FileNotFoundError, "no CLIP model folder"),
        (lambda: clip_score(clip, images[0], PROMPTS[:2]), ValueError, "need images of shape [N >= 1, H, W, 3]"),
        (lambda: clip_score(clip, images.transpose(0, 3, 1, 2), PROMPTS[:2]), ValueError, "got (2, 3, 40, 48)"),
        (lambda: clip_score(clip, images, PROMPTS[:3]), ValueError, "2 images but 3 prompts"),
        (lambda: clip_score(clip, images / 127.5 - 1, PROMPTS[:2]), ValueError, "float images must lie in [0, 1]"),
        (lambda: clip_score(clip, images.astype(np.int32), PROMPTS[:2]), ValueError, "uint8 or float"),
        (lambda: clip_score(clip, images, "a cat"), TypeError, "not one string"),
    ]
    for call, kind, needle in cases:
        with pytest.raises(kind) as e:
            call()
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
