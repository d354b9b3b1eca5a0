"""Our Flax SD UNet against diffusers' UNet2DConditionModel on tiny random SD-1.x- and
SD-2.x-style configurations (through the converter), and the caching invariants on it.

eps- and v-prediction models are the same network: the parameterisation lives in the
denoiser wrapper (``diffusion.nn.denoiser``), so one parity test covers both.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from diffusion.contract import COMPUTE, Modes  # noqa: E402
from diffusion.convert.tensors import ConversionError, load_state_dict  # noqa: E402
from diffusion.convert.unet import convert_unet, load_unet  # noqa: E402
from diffusion.nn.denoiser import Denoiser  # noqa: E402
from diffusion.nn.sd_unet import SDUNet, SDUNetConfig  # noqa: E402
from diffusion.schedules import make_schedule  # noqa: E402

# float32 on both sides; the two frameworks order their sums differently (convolutions,
# GroupNorm, softmax) through ~40 layers, which leaves differences ~1e-6 of the output's
# scale; 1e-4 leaves room for that depth, and any wiring error (a skip in the wrong order,
# the time embedding off by one step, a transposed head split) is O(1e-2) or more.
RTOL = 1e-4

SD1 = dict(block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
           up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1, cross_attention_dim=12,
           attention_head_dim=2, norm_num_groups=8, sample_size=8, in_channels=4, out_channels=4)
SD2 = dict(SD1, block_out_channels=(16, 32, 32), layers_per_block=2, use_linear_projection=True,
           down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
           up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4, 4))


# SDXL's layout: no attention in the first block, several transformer layers per block, linear
# projections, heads from attention_head_dim, and the text_time added embedding (pooled text 16 wide
# here, six size numbers through 8-wide sinusoids)
SDXL = dict(SD1, block_out_channels=(16, 32), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
            attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=8, projection_class_embeddings_input_dim=16 + 6 * 8)


def tiny_unet(tmp_path, kwargs, seed=0):
    torch.manual_seed(seed)
    model = diffusers.UNet2DConditionModel(**kwargs).eval()
    with torch.no_grad():  # random norm affines, so a wrong epsilon or group count shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model


def inputs(batch=2, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, size, size, 4)).astype(np.float32),
            rng.standard_normal((batch, 5, 12)).astype(np.float32))


@pytest.mark.parametrize("kwargs", [SD1, SD2], ids=["sd1", "sd2"])
def test_sd_unet_matches_diffusers(tmp_path, kwargs):
    ref = tiny_unet(tmp_path, kwargs)
    config, params = load_unet(tmp_path)
    x, ctx = inputs()
    net = SDUNet(config)
    for k in (0, 500, 999):
        ours = net.apply({"params": params}, x, jnp.full((2,), (k + 1) / 1000), ctx)
        with torch.no_grad():
            theirs = ref(torch.tensor(x.transpose(0, 3, 1, 2)), k, encoder_hidden_states=torch.tensor(ctx)).sample
        theirs = theirs.numpy().transpose(0, 2, 3, 1)
        err, scale = float(np.max(np.abs(np.asarray(ours) - theirs))), float(np.max(np.abs(theirs)))
        print(f"k={k}: max abs diff {err:.2e} of scale {scale:.2f}")
        assert err <= RTOL * scale


def test_sdxl_style_unet_with_its_added_conditions_matches_diffusers(tmp_path):
    ref = tiny_unet(tmp_path, SDXL)
    config, params = load_unet(tmp_path)
    assert config.pooled_dim == 16
    x, ctx = inputs()
    rng = np.random.default_rng(1)
    pooled = rng.standard_normal((2, 16)).astype(np.float32)
    time_ids = np.array([[1024, 1024, 0, 0, 1024, 1024], [512, 768, 32, 16, 1024, 1024]], np.float32)
    net = SDUNet(config)
    ours = net.apply({"params": params}, x, jnp.full((2,), 0.5), ctx, text_embeds=pooled, time_ids=time_ids)
    with torch.no_grad():
        theirs = ref(torch.tensor(x.transpose(0, 3, 1, 2)), 499, encoder_hidden_states=torch.tensor(ctx),
                     added_cond_kwargs={"text_embeds": torch.tensor(pooled), "time_ids": torch.tensor(time_ids)}).sample
    theirs = theirs.numpy().transpose(0, 2, 3, 1)
    assert np.max(np.abs(np.asarray(ours) - theirs)) <= RTOL * np.max(np.abs(theirs))
    other = net.apply({"params": params}, x, jnp.full((2,), 0.5), ctx, text_embeds=pooled, time_ids=time_ids[::-1])
    assert np.max(np.abs(np.asarray(other) - np.asarray(ours))) > 1e-3  # the sizes reach the output
    with pytest.raises(ValueError, match=r"needs cond\['time_ids'\]"):
        net.apply({"params": params}, x, jnp.full((2,), 0.5), ctx, text_embeds=pooled)


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd1")
    tiny_unet(folder, SD1)
    return load_unet(folder)


def test_attention_reuse_and_feature_caching_invariants(sd1):
    config, params = sd1
    den = Denoiser(SDUNet(config), make_schedule("scaled_linear", 1000), "eps")
    x, ctx = inputs()
    cond, t = {"context": jnp.asarray(ctx)}, jnp.full((2,), 0.6)
    full = den(params, x, t, cond)[0].eps
    store = Modes(attention="store")
    cache = den.init_cache(params, x, cond, modes=store)
    assert cache and all(v.shape[-1] == v.shape[-2] for v in jax.tree.leaves(cache))  # self-attention maps only
    _, cache = den(params, x, t, cond, cache=cache, modes=store)
    reused = den(params, x, t, cond, cache=cache, modes=Modes(attention="reuse"))[0].eps
    np.testing.assert_allclose(reused, full, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(full))))
    net = SDUNet(config)
    for branch in range(net.num_branches):
        stored = Modes(features="store", feature_branch=branch)
        cache = den.init_cache(params, x, cond, modes=stored)
        _, cache = den(params, x, t, cond, cache=cache, modes=stored)
        got = den(params, x, t, cond, cache=cache, modes=Modes(features="retrieve", feature_branch=branch))[0].eps
        np.testing.assert_allclose(got, full, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(full))))
        later = den(params, x, t * 0.5, cond, cache=cache, modes=Modes(features="retrieve", feature_branch=branch))[0]
        assert float(jnp.max(jnp.abs(later.eps - full))) > 1e-3  # the shallow path does run at the new time
    with pytest.raises(ValueError, match="feature_branch must be in"):
        den(params, x, t, cond, modes=Modes(features="store", feature_branch=net.num_branches))
    with pytest.raises(ValueError, match=r"needs cond\['context'\]"):
        den(params, x, t, {}, modes=COMPUTE)


def test_unet_conversion_names_bad_keys_and_options(tmp_path):
    tiny_unet(tmp_path, SD1)
    tensors = load_state_dict(tmp_path)
    config = SDUNetConfig.from_dict(json.loads((tmp_path / "config.json").read_text()))
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    with pytest.raises(ConversionError, match=f"missing tensor '{key}'"):
        convert_unet({k: v for k, v in tensors.items() if k != key}, config, "x")
    with pytest.raises(ConversionError, match=r"no place for: \['add_embedding.linear_1.weight'\]"):
        convert_unet({**tensors, "add_embedding.linear_1.weight": np.zeros((2, 2))}, config, "x")
    with pytest.raises(ConversionError, match="up_blocks_1_resnets_0/conv1/kernel has shape"):
        convert_unet({**tensors, "up_blocks.1.resnets.0.conv1.weight": np.zeros((16, 40, 3, 3), np.float32)},
                     config, "x")
    with pytest.raises(ValueError, match="class_embed_type='timestep' is not supported"):
        SDUNetConfig.from_dict({**SD1, "class_embed_type": "timestep"})
    with pytest.raises(ValueError, match="do not mirror"):
        SDUNetConfig.from_dict({**SD1, "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D")})


def test_closed_form_flops_match_xla_count():
    """benchmarks/sd_flops.py (the per-resolution FLOP table of docs/benchmarks.md) against
    XLA's count of the compiled call, on a UNet wide enough that matmuls and convolutions
    dominate as they do at SD size (norms, activations and softmax are left out: a few %)."""
    from benchmarks.common import flops_of
    from benchmarks.sd_flops import unet_flops

    kwargs = dict(SD1, block_out_channels=(64, 128), cross_attention_dim=32, attention_head_dim=4,
                  norm_num_groups=32, layers_per_block=2)
    config = SDUNetConfig.from_dict(kwargs)
    net = SDUNet(config)
    x, ctx = jnp.zeros((1, 16, 16, 4)), jnp.zeros((1, 8, 32))
    params = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), x, jnp.zeros((1,)), ctx))["params"]
    xla = flops_of(jax.jit(lambda p: net.apply({"params": p}, x, jnp.zeros((1,)), ctx)).lower(params))
    table = unet_flops(config.block_out_channels, config.down_block_types, config.layers_per_block, 4, 4, 16, 8, 32)
    closed = sum(sum(v.values()) for v in table.values())
    assert abs(closed - xla) / xla < 0.05, (closed, xla)


@pytest.mark.parametrize("argv,message", [
    (["--size", "0"], "--size must be a positive multiple of 8"), (["--size", "-8"], "positive multiple of 8"),
    (["--size", "60"], "positive multiple of 8"), (["--batches", "0,2"], "--batches must all be >= 1"),
    (["--batches", "nan"], "comma list of integers"), (["--repeats", "0"], "--repeats must be >= 1"),
])
def test_sd_unet_speed_refuses_bad_flags(argv, message, capsys):
    from benchmarks.sd_unet_speed import parse_args

    with pytest.raises(SystemExit) as e:
        parse_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert parse_args(["--batches", "1,2", "--size", "16"]).batch_list == [1, 2]


def test_dropout_acts_in_training_only(sd1):
    """config.model.dropout reaches the SD UNet's resnets (before conv2, as in diffusers):
    sampling ignores it; in training it draws from the 'dropout' rng (another key, another
    draw), the same with and without remat; at rate 1 nothing before a resnet's dropout
    reaches the output, so those parameters get exactly zero gradient."""
    config, params = sd1
    x, ctx = inputs()
    t = jnp.full((2,), 0.6)
    plain = SDUNet(config).apply({"params": params}, x, t, ctx)
    net = SDUNet(config, dropout=0.5)
    np.testing.assert_array_equal(net.apply({"params": params}, x, t, ctx), plain)

    def train(net, key, p=params):
        return net.apply({"params": p}, x, t, ctx, train=True, rngs={"dropout": jax.random.key(key)})

    a, b, a_remat = jax.jit(lambda: (train(net, 0), train(net, 1),
                                     train(SDUNet(config, dropout=0.5, remat="nothing_saveable"), 0)))()
    assert float(jnp.max(jnp.abs(a - plain))) > 1e-2 * float(jnp.max(jnp.abs(plain)))
    assert float(jnp.max(jnp.abs(b - a))) > 1e-2 * float(jnp.max(jnp.abs(plain)))
    np.testing.assert_allclose(a_remat, a, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(a))))
    grads = jax.jit(jax.grad(lambda p: jnp.sum(train(SDUNet(config, dropout=1.0), 0, p) ** 2)))(params)
    before_dropout = {"conv1", "norm1", "norm2", "time_emb_proj"}
    blocked = {k: v for k, v in jax.tree_util.tree_leaves_with_path(grads)
               if "resnets" in jax.tree_util.keystr(k[:1]) and k[1].key in before_dropout}
    assert len(blocked) >= 4 * 5  # every resnet's conv1, norm1, norm2 and time_emb_proj
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in blocked.values())
    assert float(jnp.max(jnp.abs(grads["conv_in"]["kernel"]))) > 0  # the skips still carry the input
