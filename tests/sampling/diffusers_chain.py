"""Diffusers' scheduler loop and ours on one fixed network (the exact Gaussian-mixture
denoiser read as an eps or v network of the timestep), from the same noise: the harness of
tests/sampling/test_diffusers_schedulers.py and tests/orchestration/test_import_schedulers.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from diffusion.analytic import GaussianMixtureDenoiser, make_mixture
from diffusion.contract import Stateless
from diffusion.param import to_prediction, v_from
from diffusion.schedules import Schedule, make_schedule
from sampling.loop import sample
from sampling.registry import ModelCaps
from sampling.spec import SamplerSpec, make_spec

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

SD = make_schedule("scaled_linear")  # SD 1.x / 2.x / XL betas
T = 1000
MIX = make_mixture(SD, [[-1.0, 0.5], [1.0, -0.5], [0.3, 1.2]], [0.3, 0.2, 0.25], [0.5, 0.3, 0.2])
Z = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
KEY = jax.random.PRNGKey(7)
SD_BETAS = dict(num_train_timesteps=T, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def network(x, t, pred_type):
    """The fixed 'network': the mixture's exact prediction at ``t`` (base schedule), as ``pred_type``."""
    pred = MIX(None, x, t)[0]
    if pred_type == "eps":
        return pred.eps
    return v_from(pred, *SD.alpha_sigma(jnp.asarray(t, jnp.float32)))


@struct.dataclass
class MixtureNetwork(Stateless):
    """The network behind a denoiser: raw ``pred_type`` output converted with ``schedule`` (which
    the sampler may replace), as ``diffusion.nn.denoiser.Denoiser`` does."""

    mixture: GaussianMixtureDenoiser
    schedule: Schedule = struct.field(pytree_node=False)
    pred_type: str = struct.field(pytree_node=False, default="eps")

    def __call__(self, params, x_t, t, cond=None, **_):
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x_t.shape[:1])
        raw = network(x_t, self.schedule.network_time(t), self.pred_type)
        return to_prediction(raw, self.pred_type, x_t, *self.schedule.alpha_sigma(t)), {}


def ours(solver, steps, grid, pred_type, **knobs):
    return run_spec(make_spec(solver, steps, grid, **knobs), pred_type)


def run_spec(spec: SamplerSpec, pred_type):
    den, sol, g = spec.build(MixtureNetwork(MIX, SD, pred_type), ModelCaps())
    return np.asarray(sample(den, None, sol, g, Z, None, KEY), np.float64)


def theirs(scheduler, steps, pred_type, noises=None, module=None, monkeypatch=None):
    scheduler.set_timesteps(steps)
    if noises is not None:
        it = iter(noises)
        monkeypatch.setattr(module, "randn_tensor", lambda *a, **kw: next(it))
    x = torch.tensor(np.asarray(Z)) * scheduler.init_noise_sigma
    for tau in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, tau)
        t = (float(tau) + 1.0) / T
        out = network(jnp.asarray(x_in.numpy(), jnp.float32), jnp.full((x_in.shape[0],), t, jnp.float32), pred_type)
        x = scheduler.step(torch.tensor(np.asarray(out)), tau, x, return_dict=False)[0]
    return x.numpy().astype(np.float64)


def solver_noises(steps):
    """The per-step noise of a stochastic solver (``sampling.solvers.base.fresh_noise``), as torch tensors."""
    out, k = [], KEY
    for _ in range(steps):
        k, sub = jax.random.split(k)
        out.append(torch.tensor(np.asarray(jax.random.normal(sub, Z.shape))))
    return out


def close(a, b, mean_tol=1e-5, max_tol=1e-4):
    diff = np.abs(a - b)
    assert diff.mean() <= mean_tol and diff.max() <= max_tol, f"mean {diff.mean():.2e}, max {diff.max():.2e}"


PRED = {"eps": "epsilon", "v": "v_prediction"}
