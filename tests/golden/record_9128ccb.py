"""Records sampler outputs, losses and train steps of the code at 9128ccb (before the
sampling-registry renovation, issue 10) into ``pre_renovation.npz``.

    python -m tests.golden.record_9128ccb

Uses the old API (``SamplerSpec`` with positional knobs, ``Denoiser`` returning a bare
``Prediction``), so it runs only on that commit; tests/test_renovation_identity.py
rebuilds every case with the new API and compares.
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
from launch.generate import SamplerSpec, generate
from sampling.loop import sample
from sampling.solvers import SOLVERS

OUT = pathlib.Path(__file__).with_name("pre_renovation.npz")
SCHED = make_schedule("linear")
MIX = make_mixture(SCHED, [[-1.0, 0.5], [1.0, -0.5]], [0.3, 0.2])
STEPS = 6


def tiny_unet(**kw):
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


def mixture_cases() -> dict:
    x_T = jax.random.normal(jax.random.PRNGKey(0), (8, 2))
    out = {}
    specs = {f"{s}/plain": SamplerSpec(s, 10) for s in SOLVERS}
    specs.update({f"{s}/ts_query": SamplerSpec(s, 10, time_shift=(40.0, 300.0)) for s in SOLVERS})
    specs.update({f"{s}/ts_dest": SamplerSpec(s, 10, time_shift=(40.0, 300.0), time_shift_mode="destination")
                  for s in SOLVERS})
    specs["ddim/eta0.5"] = SamplerSpec("ddim", 10, eta=0.5)
    specs.update({f"ddim/grid_{g}": SamplerSpec("ddim", 10, g) for g in ("uniform", "quadratic", "logsnr")})
    for name, spec in specs.items():
        den, solver, grid = spec.build(MIX, None)
        out[f"mixture/{name}"] = np.asarray(sample(den, None, solver, grid, x_T, None, jax.random.PRNGKey(1)))
    return out


def unet_cases() -> dict:
    net = tiny_unet(num_classes=3)
    den = Denoiser(net, SCHED, "x0")
    params = noisy_params(net, label=jnp.zeros((1,), jnp.int32))
    x_T = jax.random.normal(jax.random.PRNGKey(2), (4, 8, 8, 1))
    cond = {"label": jnp.array([0, 1, 2, 0], jnp.int32)}
    everything = dict(guidance=2.0, time_shift=(40.0, 300.0), attention_reuse="hurry:2", feature_cache="uniform:2",
                      cache_branch=1)
    specs = {
        "ddim/plain": SamplerSpec("ddim", STEPS),
        "ddim/guided": SamplerSpec("ddim", STEPS, guidance=2.0),
        "ddim/reuse": SamplerSpec("ddim", STEPS, attention_reuse="hurry:2"),
        "ddim/reuse_steps": SamplerSpec("ddim", STEPS, attention_reuse="steps:2,4"),
        "ddim/cache": SamplerSpec("ddim", STEPS, feature_cache="uniform:2", cache_branch=1),
        "ddim/everything": SamplerSpec("ddim", STEPS, **everything),
        "fpndm/everything": SamplerSpec("fpndm", STEPS, **everything),
        "dpmpp2m/plain": SamplerSpec("dpmpp2m", STEPS),
    }
    out = {}
    for name, spec in specs.items():
        d, solver, grid = spec.build(den, 3)
        out[f"unet/{name}"] = np.asarray(sample(d, params, solver, grid, x_T, cond, jax.random.PRNGKey(3)))
    out["unet/generate"] = generate(den, params, (8, 8, 1), 10, SamplerSpec("ddpm", 4, guidance=1.5), batch_size=4,
                                    seed=3, labels=np.arange(10) % 3, null_label=3)
    # a w-conditioned student (GuidanceInput) and a consistency student on its own solver
    wnet = tiny_unet(num_classes=3, guidance_embed=True)
    wden = Denoiser(wnet, SCHED, "v")
    wparams = noisy_params(wnet, label=jnp.zeros((1,), jnp.int32), guidance=jnp.ones((1,)))
    d, solver, grid = SamplerSpec("ddim", 4, guidance=3.0).build(wden, 3)
    out["unet/w_student"] = np.asarray(sample(d, wparams, solver, grid, x_T, cond, jax.random.PRNGKey(4)))
    cden = ConsistencyFunction(Denoiser(net, SCHED, "v"))
    d, solver, grid = SamplerSpec("consistency", 4).build(cden, 3)
    out["unet/consistency"] = np.asarray(sample(d, params, solver, grid, x_T, cond, jax.random.PRNGKey(5)))
    return out


def loss_cases() -> dict:
    """Loss values and gradients of every method at fixed params, batch and rng."""
    net = tiny_unet(num_classes=3)
    params = noisy_params(net, label=jnp.zeros((1,), jnp.int32))
    batch = {"image": jnp.tanh(jax.random.normal(jax.random.PRNGKey(6), (8, 8, 8, 1))),
             "label": jnp.array([0, 1, 2, 0, 1, 2, 0, 1], jnp.int32)}
    opt = make_optimizer(1e-3, 2, 100)
    v_den = Denoiser(net, SCHED, "v")
    wnet = tiny_unet(num_classes=3, guidance_embed=True)
    w_den = Denoiser(wnet, SCHED, "v")
    w_params = noisy_params(wnet, label=jnp.zeros((1,), jnp.int32), guidance=jnp.ones((1,)))
    methods = {
        "progressive": (progressive_distillation(v_den, start_steps=8, steps_per_round=4, rounds=2,
                                                 num_classes=3), v_den, params),
        "guided": (guided_distillation(w_den, start_steps=8, steps_per_round=4, rounds=2, num_classes=3,
                                       p_guided=0.5), w_den, w_params),
        "consistency": (consistency_distillation(v_den, ConsistencyFunction(v_den), num_skip=10, teacher_guidance=2.0,
                                                 num_classes=3), v_den, params),
    }
    out = {}
    eps_loss = make_diffusion_loss(Denoiser(net, SCHED, "eps"), "eps", 0.5, 3)
    for name, (loss_fn, p, extra) in {"diffusion": (eps_loss, params, None),
                                      **{k: (m.loss_fn, p, m.init_extra(p, p)) for k, (m, _, p) in methods.items()}
                                      }.items():
        state = create_train_state(p, opt, jax.random.PRNGKey(7), extra)
        (loss, _), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(p, batch, jax.random.PRNGKey(8), state)
        out[f"loss/{name}"] = np.asarray(loss)
        out[f"grad/{name}"] = fingerprint(grads)
    # three optimizer steps of plain training
    step = jax.jit(make_train_step(eps_loss, opt, 0.9))
    state = create_train_state(params, opt, jax.random.PRNGKey(9))
    for _ in range(3):
        state, _ = step(state, batch)
    out["train/params"] = fingerprint(state.params)
    out["train/ema"] = fingerprint(state.ema_params)
    return out


def main():
    cases = {**mixture_cases(), **unet_cases(), **loss_cases()}
    np.savez_compressed(OUT, **cases)
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
