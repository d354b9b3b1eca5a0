"""TiUE's fake score as the reference trains it (distill/tiue.py; docs/design/fidelity.md):
LoRA r64, alpha 108 on query and value over the frozen teacher, only the adapters moving,
Adam with clipping at 1.0 against torch, and one condition-dropout draw per batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill.tiue import drop_mask, fake_optimizer
from tests.distill.test_tiue import eps_den

DIGITS_UNET = dict(channels=32, channel_mult=(1, 2), num_res_blocks=2, attn_resolutions=(4,), num_heads=4,
                   num_classes=10, out_channels=1)  # configs/digits.py's network (1,081,569 params)


def test_the_fake_score_is_lora_r64_alpha108_on_query_and_value():
    """train_loopfree.py:490-495 + train_loopfree.sh: LoraConfig(r=64, lora_alpha=108, target_modules=
    ["to_q", "to_v"]) over the teacher: on the digits UNet, adapters on exactly the 12 query and value
    kernels of its 6 attention layers, a and b 64 x 64, scale 108 / 64 = 1.6875; at the start the fake
    score is the teacher exactly."""
    from flax import traverse_util

    from diffusion.nn.denoiser import Denoiser
    from diffusion.nn.unet import UNet
    from diffusion.schedules import make_schedule
    from diffusion.train import lora
    from distill.tiue import tiue_distillation

    net = UNet(**DIGITS_UNET)
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)),
                            jnp.zeros((1,), jnp.int32))["params"]
    params = jax.tree.map(lambda s: jnp.full(s.shape, 0.25, s.dtype), shapes)  # shapes are what matters here
    assert sum(x.size for x in jax.tree.leaves(params)) == 1_081_569
    den = Denoiser(net, make_schedule("scaled_linear"), "eps")
    extra = tiue_distillation(den, den, num_classes=10).init_extra(params, params)
    paths = sorted(extra.fake)
    assert len(paths) == 12 and {p.split("/")[-2] for p in paths} == {"query", "value"}
    assert paths == sorted(p for p in lora.target_paths(params) if p.split("/")[-2] in ("query", "value"))
    assert all(ab["a"].shape == (64, 64) and ab["b"].shape == (64, 64) for ab in extra.fake.values())
    assert sum(ab["a"].size + ab["b"].size for ab in extra.fake.values()) == 98_304  # 2 x the 49,152 q/v params
    merged = lora.merge({"base": params, "adapters": extra.fake}, 108.0)
    for x, y in zip(jax.tree.leaves(merged), jax.tree.leaves(params)):
        np.testing.assert_array_equal(x, y)
    path = paths[0]
    ab = {"a": extra.fake[path]["a"], "b": jnp.ones((64, 64))}
    key = tuple(path.split("/"))
    delta = traverse_util.flatten_dict(lora.merge({"base": params, "adapters": {path: ab}}, 108.0))[key]
    kernel = traverse_util.flatten_dict(params)[key]
    np.testing.assert_allclose((delta - kernel).reshape(64, 64), 1.6875 * ab["a"] @ ab["b"], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"distill.fake_lora_rank=65.*exceeds the smaller side \(64\)"):
        tiue_distillation(den, den, num_classes=10, fake_lora_rank=65).init_extra(params, params)
    # fake=full keeps the whole copy (declared variant)
    full = tiue_distillation(den, den, num_classes=10, fake="full").init_extra(params, params)
    assert jax.tree.structure(full.fake) == jax.tree.structure(params)


def test_one_fake_step_moves_only_its_adapters():
    from distill.tiue import tiue_distillation
    from tests.sampling.test_loopfree import PARAMS, noisy

    den = eps_den()
    method = tiue_distillation(den, den, steps=2, num_classes=3, fake_lora_rank=4)
    student = noisy(PARAMS, key=9)
    extra = method.init_extra(student, PARAMS)
    state = type("S", (), {"extra": extra, "replace": lambda self, **kw: type("S", (), {**vars(self), **kw,
                                                                                       "replace": self.replace})()})()
    batch = {"image": jnp.zeros((4, 8, 8, 1)), "label": jnp.array([0, 1, 2, 1])}
    new = jax.jit(lambda p, b: method.after_update(state, method.loss_fn(p, b, jax.random.PRNGKey(0), state)[1]
                                                   ["carry"]).extra)(student, batch)
    for x, y in zip(jax.tree.leaves(new.teacher), jax.tree.leaves(PARAMS)):
        np.testing.assert_array_equal(x, y)  # the frozen base
    assert all(float(jnp.abs(ab["b"]).max()) > 0 for ab in new.fake.values())  # b left zero: every adapter moved
    assert int(jax.tree.leaves(new.fake_opt)[0]) == 1  # Adam's count


def test_the_fake_scores_adam_is_clipped_at_1():
    """train_loopfree.py:954-955: clip_grad_norm_(1.0) before Adam(1e-3). Two steps on gradients
    10 u then u, u = (0.6, -0.8): clipped, both are u and each moves lr against its sign
    (-0.002, 0.002); unclipped, Adam's second moment remembers the 10 u: (-0.0017408, 0.0017408)."""
    import optax

    u = jnp.array([0.6, -0.8])

    def run(clip):
        opt = fake_optimizer(1e-3, clip)
        p = jnp.zeros(2)
        st = opt.init(p)
        for g in (10 * u, u):
            up, st = opt.update(g, st, p)
            p = optax.apply_updates(p, up)
        return np.asarray(p)

    np.testing.assert_allclose(run(1.0), [-0.0020000, 0.0020000], atol=1e-7)
    np.testing.assert_allclose(run(0.0), [-0.0017408, 0.0017408], atol=1e-7)
    torch = pytest.importorskip("torch")
    p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([p], lr=1e-3)
    for g in (10 * torch.tensor([0.6, -0.8], dtype=torch.float64), torch.tensor([0.6, -0.8], dtype=torch.float64)):
        p.grad = g.clone()
        torch.nn.utils.clip_grad_norm_([p], 1.0)
        opt.step()
    np.testing.assert_allclose(run(1.0), p.detach().numpy(), atol=1e-7)


def test_the_fake_scores_condition_dropout_is_one_draw_per_batch():
    """train_loopfree.py:938: `null if random.random() < 0.1 else prompt` for the whole batch."""
    keys = jax.random.split(jax.random.PRNGKey(0), 2000)
    masks = np.asarray(jax.vmap(lambda k: drop_mask(k, 0.1, 8, "batch"))(keys))
    assert np.all(masks.all(1) | ~masks.any(1))
    assert abs(masks.all(1).mean() - 0.1) < 0.02
    per_sample = np.asarray(jax.vmap(lambda k: drop_mask(k, 0.1, 8, "sample"))(keys))
    assert abs(per_sample.mean() - 0.1) < 0.01 and not np.all(per_sample.all(1) | ~per_sample.any(1))
    with pytest.raises(ValueError, match="unknown distill.fake_cond_drop_mode"):
        drop_mask(keys[0], 0.1, 8, "nope")
