"""The golden cases of ``pre_renovation.npz``, rebuilt with today's API (registry specs,
the ``(Prediction, cache)`` denoiser contract).

The record was written by the code before the sampling-registry renovation (issue 10),
with its old API: ``git show 3312c6d:tests/golden/record_9128ccb.py`` is the recorder
(it runs only on that commit). ``test_identity.py`` compares a subset of the cases on
every test run; ``python -m tests.golden.cases`` compares all of them and prints the
largest differences (the recorded comparison in docs/design/registry.md). After the
renovation had matched all 46 recorded arrays bitwise, the time-shift fix of the same
issue (unbiased per-sample variance, cutoff on integer steps) changed the 16 cases with a
time shift on purpose; those were re-recorded with the fixed code, the other 30 are as
9128ccb wrote them.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from diffusion.analytic import make_mixture
from diffusion.nn.denoiser import Denoiser
from diffusion.nn.unet import UNet
from diffusion.schedules import make_schedule
from diffusion.train.objective import make_diffusion_loss
from diffusion.train.optim import make_optimizer
from diffusion.train.state import create_train_state
from diffusion.train.step import make_train_step
from distill import ConsistencyFunction, consistency_distillation, guided_distillation, progressive_distillation
from orchestration.generation.generate import generate
from sampling import registry
from sampling.loop import sample
from sampling.registry import ModelCaps
from sampling.spec import make_spec
OUT = pathlib.Path(__file__).with_name("pre_renovation.npz")
STEPS = 6
SCHED = make_schedule("linear")
MIX = make_mixture(SCHED, [[-1.0, 0.5], [1.0, -0.5]], [0.3, 0.2])
TS = {"time_shift": "40:300"}
EVERYTHING = dict(guidance=2.0, time_shift="40:300", attention_reuse="hurry:2", feature_cache="uniform:2",
                  cache_branch=0)  # DeepCache numbering (feature_branch 1)


def tiny_unet(**kw) -> UNet:
    return UNet(channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8, 4), num_heads=2, **kw)


def noisy_params(net, **kw):
    """Init params plus noise (the zero-initialised output layers would hide everything)."""
    p = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)), **kw)["params"]
    leaves, tree = jax.tree.flatten(p)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    return jax.tree.unflatten(tree, [w + 0.05 * jax.random.normal(k, w.shape) for w, k in zip(leaves, keys)])


def fingerprint(tree) -> np.ndarray:
    """``[33]``: the squared norm of all leaves and 32 fixed random projections (float64)."""
    v = np.concatenate([np.asarray(g, np.float64).ravel() for g in jax.tree.leaves(tree)])
    proj = np.random.default_rng(0).standard_normal((32, v.size))
    return np.concatenate([[v @ v], proj @ v])


RECORDED_SOLVERS = ("ddpm", "ddim", "consistency", "spndm", "fpndm", "dpmpp2m", "dpmpp3m")  # at 9128ccb


def mixture_specs() -> dict:
    specs = {f"{s}/plain": make_spec(s, 10) for s in RECORDED_SOLVERS}
    specs.update({f"{s}/ts_query": make_spec(s, 10, **TS) for s in RECORDED_SOLVERS})
    specs.update({f"{s}/ts_dest": make_spec(s, 10, **TS, time_shift_mode="destination") for s in RECORDED_SOLVERS})
    specs["ddim/eta0.5"] = make_spec("ddim", 10, eta=0.5)
    specs.update({f"ddim/grid_{g}": make_spec("ddim", 10, g) for g in ("uniform", "quadratic", "logsnr")})
    return {f"mixture/{k}": v for k, v in specs.items()}


def mixture_case(name: str) -> np.ndarray:
    x_T = jax.random.normal(jax.random.PRNGKey(0), (8, 2))
    den, solver, grid = mixture_specs()[name].build(MIX, ModelCaps())
    return np.asarray(sample(den, None, solver, grid, x_T, None, jax.random.PRNGKey(1)))


UNET_SPECS = {
    "unet/ddim/plain": make_spec("ddim", STEPS),
    "unet/ddim/guided": make_spec("ddim", STEPS, guidance=2.0),
    "unet/ddim/reuse": make_spec("ddim", STEPS, attention_reuse="hurry:2"),
    "unet/ddim/reuse_steps": make_spec("ddim", STEPS, attention_reuse="steps:2,4"),
    "unet/ddim/cache": make_spec("ddim", STEPS, feature_cache="uniform:2", cache_branch=0),
    "unet/ddim/everything": make_spec("ddim", STEPS, **EVERYTHING),
    "unet/fpndm/everything": make_spec("fpndm", STEPS, **EVERYTHING),
    "unet/dpmpp2m/plain": make_spec("dpmpp2m", STEPS),
}


def unet_caps(net: UNet, w_conditioned: bool = False) -> ModelCaps:
    return ModelCaps(null_label=3, w_conditioned=w_conditioned, self_attention=True,
                     feature_branches=net.num_branches)


def unet_case(name: str) -> np.ndarray:
    net = tiny_unet(num_classes=3)
    params = noisy_params(net, label=jnp.zeros((1,), jnp.int32))
    x_T = jax.random.normal(jax.random.PRNGKey(2), (4, 8, 8, 1))
    cond = {"label": jnp.array([0, 1, 2, 0], jnp.int32)}
    if name in UNET_SPECS:
        d, solver, grid = UNET_SPECS[name].build(Denoiser(net, SCHED, "x0"), unet_caps(net))
        return np.asarray(sample(d, params, solver, grid, x_T, cond, jax.random.PRNGKey(3)))
    if name == "unet/generate":
        return generate(Denoiser(net, SCHED, "x0"), params, (8, 8, 1), 10, make_spec("ddpm", 4, guidance=1.5),
                        unet_caps(net), batch_size=4, seed=3, labels=np.arange(10) % 3)
    if name == "unet/w_student":
        wnet = tiny_unet(num_classes=3, guidance_embed=True)
        wparams = noisy_params(wnet, label=jnp.zeros((1,), jnp.int32), guidance=jnp.ones((1,)))
        d, solver, grid = make_spec("ddim", 4, guidance=3.0).build(Denoiser(wnet, SCHED, "v"), unet_caps(wnet, True))
        return np.asarray(sample(d, wparams, solver, grid, x_T, cond, jax.random.PRNGKey(4)))
    assert name == "unet/consistency", name
    d, solver, grid = make_spec("consistency", 4).build(ConsistencyFunction(Denoiser(net, SCHED, "v")), unet_caps(net))
    return np.asarray(sample(d, params, solver, grid, x_T, cond, jax.random.PRNGKey(5)))


def loss_case(name: str) -> dict:
    """``{"loss/<name>": value, "grad/<name>": fingerprint}`` (or the train-step fingerprints)."""
    net = tiny_unet(num_classes=3)
    params = noisy_params(net, label=jnp.zeros((1,), jnp.int32))
    batch = {"image": jnp.tanh(jax.random.normal(jax.random.PRNGKey(6), (8, 8, 8, 1))),
             "label": jnp.array([0, 1, 2, 0, 1, 2, 0, 1], jnp.int32)}
    opt = make_optimizer(1e-3, 2, 100)
    eps_loss = make_diffusion_loss(Denoiser(net, SCHED, "eps"), "eps", 0.5, 3)
    if name == "train":
        step = jax.jit(make_train_step(eps_loss, opt, 0.9))
        state = create_train_state(params, opt, jax.random.PRNGKey(9))
        for _ in range(3):
            state, _ = step(state, batch)
        return {"train/params": fingerprint(state.params), "train/ema": fingerprint(state.ema_params)}
    v_den = Denoiser(net, SCHED, "v")
    if name == "diffusion":
        loss_fn, p, extra = eps_loss, params, None
    elif name == "progressive":
        method = progressive_distillation(v_den, start_steps=8, steps_per_round=4, rounds=2, num_classes=3)
        loss_fn, p, extra = method.loss_fn, params, method.init_extra(params, params)
    elif name == "guided":
        wnet = tiny_unet(num_classes=3, guidance_embed=True)
        p = noisy_params(wnet, label=jnp.zeros((1,), jnp.int32), guidance=jnp.ones((1,)))
        # the recorded settings (the defaults before issue 26)
        method = guided_distillation(Denoiser(wnet, SCHED, "v"), start_steps=8, steps_per_round=4, rounds=2,
                                     num_classes=3, p_guided=0.5, w_range=(1.0, 4.0), vanilla_w="drawn")
        loss_fn, extra = method.loss_fn, method.init_extra(p, p)
    else:
        assert name == "consistency", name
        method = consistency_distillation(v_den, ConsistencyFunction(v_den), num_skip=10, teacher_guidance=2.0,
                                          num_classes=3)
        loss_fn, p, extra = method.loss_fn, params, method.init_extra(params, params)
    state = create_train_state(p, opt, jax.random.PRNGKey(7), extra)
    (loss, _), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(p, batch, jax.random.PRNGKey(8), state)
    return {f"loss/{name}": np.asarray(loss), f"grad/{name}": fingerprint(grads)}


def compute(name: str) -> dict:
    """``{record key: array}`` for one case name (a record key, or a loss group)."""
    if name.startswith("mixture/"):
        return {name: mixture_case(name)}
    if name.startswith("unet/"):
        return {name: unet_case(name)}
    return loss_case(name)


ALL = [*mixture_specs(), *UNET_SPECS, "unet/generate", "unet/w_student", "unet/consistency",
       "diffusion", "progressive", "guided", "consistency", "train"]


def main():
    record = np.load(OUT)
    seen, worst = set(), 0.0
    for name in ALL:
        for key, value in compute(name).items():
            seen.add(key)
            diff = float(np.max(np.abs(np.asarray(value, np.float64) - record[key])))
            worst = max(worst, diff)
            print(f"{key:32s} max |after - before| = {diff:.3g}" + ("  (bitwise equal)" if diff == 0 else ""))
    missing = sorted(set(record.files) - seen)
    print(f"{len(seen)} of {len(record.files)} recorded cases compared; largest difference {worst:.3g}"
          + (f"; not compared: {missing}" if missing else ""))


if __name__ == "__main__":
    main()
