"""Our Flax text encoders against transformers' PyTorch models on tiny random
configurations, through the converter (save_pretrained -> safetensors -> Flax params)."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from diffusion.convert.clip import load_clip_text  # noqa: E402
from diffusion.convert.tensors import ConversionError, load_state_dict  # noqa: E402
from diffusion.nn.text.clip import CLIPTextEncoder  # noqa: E402

# float32 on both sides, different summation orders; a few layers of LayerNorm and softmax
# amplify rounding to ~1e-6 of the output's scale: 1e-5 leaves room, and any wiring error
# (a transposed kernel, a missing mask, the wrong activation) is O(1).
RTOL = 1e-5


def tiny_clip(tmp_path, hidden_act="quick_gelu", eos_token_id=2, seed=0):
    torch.manual_seed(seed)
    config = transformers.CLIPTextConfig(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                         num_attention_heads=4, max_position_embeddings=16, hidden_act=hidden_act,
                                         eos_token_id=eos_token_id, bos_token_id=0, pad_token_id=1)
    model = transformers.CLIPTextModel(config).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model


def ids_with_eos(eos, length=16):
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 90, size=(3, length))
    for row, end in enumerate((5, 16, 9)):
        ids[row, end - 1] = eos
        ids[row, end:] = 1  # padding after the end token
    return ids


def close(ours, ref):
    ref = ref.detach().numpy()
    err = float(np.max(np.abs(np.asarray(ours) - ref)))
    assert err <= RTOL * float(np.max(np.abs(ref))), (err, float(np.max(np.abs(ref))))
    return err


@pytest.mark.parametrize("hidden_act,eos", [("quick_gelu", 2), ("gelu", 98)])
def test_clip_text_matches_transformers(tmp_path, hidden_act, eos):
    ref = tiny_clip(tmp_path, hidden_act, eos)
    config, params = load_clip_text(tmp_path)
    ids = ids_with_eos(eos if eos != 2 else 95)  # legacy rule: pooled at the largest id
    hidden, pooled = CLIPTextEncoder(config).apply({"params": params}, ids)
    with torch.no_grad():
        out = ref(torch.tensor(ids), output_hidden_states=True)
    close(hidden, out.last_hidden_state)
    close(pooled, out.pooler_output)
    # transformers 5 saves the keys bare; SD 1.x/2.x folders (transformers 4) prefix them with text_model.
    from diffusion.convert.clip import convert_clip_text
    prefixed = {f"text_model.{k}": v for k, v in load_state_dict(tmp_path).items()}
    again = convert_clip_text(prefixed, config, "prefixed")
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(params)))
    skipped, _ = CLIPTextEncoder(config).apply({"params": params}, ids, skip=1)  # diffusers' clip_skip=1
    with torch.no_grad():
        close(skipped, ref.final_layer_norm(out.hidden_states[-2]))


def test_sdxl_second_encoder_with_projection_and_raw_penultimate_states(tmp_path):
    """SDXL's text_encoder_2 (CLIPTextModelWithProjection): the pooled output through
    text_projection, and the pipeline's hidden_states[-2] (no final LayerNorm)."""
    torch.manual_seed(1)
    config = transformers.CLIPTextConfig(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=3,
                                         num_attention_heads=4, max_position_embeddings=16, hidden_act="gelu",
                                         eos_token_id=2, bos_token_id=0, pad_token_id=1, projection_dim=24)
    ref = transformers.CLIPTextModelWithProjection(config).eval()
    ref.save_pretrained(tmp_path, safe_serialization=True)
    ours_config, params = load_clip_text(tmp_path)
    assert ours_config.projection_dim == 24
    ids = ids_with_eos(95)
    raw, pooled = CLIPTextEncoder(ours_config).apply({"params": params}, ids, raw_skip=1)
    with torch.no_grad():
        out = ref(torch.tensor(ids), output_hidden_states=True)
    close(pooled, out.text_embeds)
    close(raw, out.hidden_states[-2])
    plain, _ = CLIPTextEncoder(ours_config).apply({"params": params}, ids)
    close(plain, out.last_hidden_state)


def test_a_config_without_some_fields_reads_transformers_defaults():
    """Older transformers wrote only the fields that differ from its defaults: those left out
    are transformers' (eos 49407, width 512), not SD 1.x's."""
    from diffusion.nn.text.clip import TRANSFORMERS_DEFAULTS, CLIPTextConfig

    theirs = transformers.CLIPTextConfig()
    assert all(getattr(theirs, k) == v for k, v in TRANSFORMERS_DEFAULTS.items())
    ours = CLIPTextConfig.from_dict({"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
                                     "architectures": ["CLIPTextModelWithProjection"]})
    assert (ours.eos_token_id, ours.hidden_size, ours.projection_dim, ours.vocab_size) == (49407, 768, 512, 49408)


def test_clip_conversion_names_bad_keys(tmp_path):
    tiny_clip(tmp_path)
    tensors = load_state_dict(tmp_path)
    from diffusion.convert.clip import convert_clip_text
    from diffusion.nn.text.clip import CLIPTextConfig
    import json
    config = CLIPTextConfig.from_dict(json.loads((tmp_path / "config.json").read_text()))
    missing = {k: v for k, v in tensors.items() if k != "encoder.layers.1.mlp.fc1.weight"}
    with pytest.raises(ConversionError, match=r"missing tensor 'encoder.layers.1.mlp.fc1.weight'"):
        convert_clip_text(missing, config, "x")
    with pytest.raises(ConversionError, match=r"no place for: \['extra.weight'\]"):
        convert_clip_text({**tensors, "extra.weight": np.zeros(3)}, config, "x")
    wrong = {**tensors, "encoder.layers.0.mlp.fc2.weight": np.zeros((32, 36), np.float32)}
    with pytest.raises(ConversionError, match=r"layers_0/fc2/kernel has shape \(36, 32\)"):
        convert_clip_text(wrong, config, "x")
    with pytest.raises(ConversionError, match="has no config.json"):
        load_clip_text(tmp_path / "nowhere")


def test_bert_matches_transformers_with_padding(tmp_path):
    from diffusion.convert.bert import load_bert
    from diffusion.nn.text.bert import BertEncoder, mean_pool

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                     num_attention_heads=4, max_position_embeddings=24, type_vocab_size=2)
    ref = transformers.BertModel(config).eval()
    ref.save_pretrained(tmp_path, safe_serialization=True)
    ours, params = load_bert(tmp_path)
    ids = np.random.default_rng(1).integers(1, 99, size=(3, 12))
    mask = np.ones_like(ids)
    mask[0, 5:], mask[2, 9:] = 0, 0
    ids[mask == 0] = 0
    hidden = BertEncoder(ours).apply({"params": params}, ids, mask)
    with torch.no_grad():
        out = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
    close(hidden, out)
    m = torch.tensor(mask, dtype=torch.float32)[..., None]
    close(mean_pool(hidden, mask), (out * m).sum(1) / m.sum(1))
