"""Our Flax AutoencoderKL against diffusers' on tiny random configurations, through the
converter (save_pretrained -> safetensors -> Flax params)."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from diffusion.convert.tensors import ConversionError, load_state_dict  # noqa: E402
from diffusion.convert.vae import convert_vae, load_vae  # noqa: E402
from diffusion.nn.vae import AutoencoderKL, VAEConfig, images_from_latents, latents_from_images  # noqa: E402

# float32 on both sides, different convolution and summation orders through ~20 layers
# of GroupNorm: rounding stays ~1e-6 of the output's scale; 1e-5 leaves room, while any
# wiring error (padding side, a transposed kernel, the wrong norm eps) is O(1e-2) or more.
RTOL = 1e-5


def tiny_vae(tmp_path, channels=(8, 16), seed=0):
    torch.manual_seed(seed)
    n = len(channels)
    model = diffusers.AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                                    up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=channels,
                                    layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=16,
                                    scaling_factor=0.5).eval()
    with torch.no_grad():  # random norms, so a wrong epsilon or group count shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model


def nchw(x):
    return torch.tensor(np.asarray(x).transpose(0, 3, 1, 2).copy())


def close(ours, ref):
    ref = ref.detach().numpy().transpose(0, 2, 3, 1)
    err = float(np.max(np.abs(np.asarray(ours) - ref)))
    print(f"max abs diff {err:.2e} of scale {float(np.max(np.abs(ref))):.2f}")
    assert err <= RTOL * float(np.max(np.abs(ref))), (err, float(np.max(np.abs(ref))))


@pytest.mark.parametrize("channels", [(8, 16), (8, 8, 16)])
def test_vae_matches_diffusers(tmp_path, channels):
    ref = tiny_vae(tmp_path, channels)
    config, params = load_vae(tmp_path)
    vae = AutoencoderKL(config)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    mean, logvar = vae.apply({"params": params}, x, method=AutoencoderKL.encode)
    with torch.no_grad():
        dist = ref.encode(nchw(x)).latent_dist
        close(mean, dist.mean)
        close(logvar, dist.logvar)
        z = latents_from_images(vae, params, x)
        close(z, dist.mean * ref.config.scaling_factor)
        close(images_from_latents(vae, params, z), ref.decode(nchw(z) / ref.config.scaling_factor).sample)
    side = 16 // 2 ** (len(channels) - 1)
    assert mean.shape == (2, side, side, 4)


def test_vae_conversion_names_bad_keys_and_options(tmp_path):
    tiny_vae(tmp_path)
    tensors = load_state_dict(tmp_path)
    config = VAEConfig.from_dict(json.loads((tmp_path / "config.json").read_text()))
    key = "decoder.up_blocks.1.resnets.0.conv2.weight"
    with pytest.raises(ConversionError, match=f"missing tensor '{key}'"):
        convert_vae({k: v for k, v in tensors.items() if k != key}, config, "x")
    with pytest.raises(ConversionError, match=r"no place for: \['encoder.extra.bias'\]"):
        convert_vae({**tensors, "encoder.extra.bias": np.zeros(2)}, config, "x")
    with pytest.raises(ConversionError, match="quant_conv/kernel has shape"):
        convert_vae({**tensors, "quant_conv.weight": np.zeros((8, 8, 3, 3), np.float32)}, config, "x")
    with pytest.raises(ValueError, match=r"down_block_types \['AttnDownEncoderBlock2D'\] are not supported"):
        VAEConfig.from_dict({"down_block_types": ["AttnDownEncoderBlock2D"]})
