"""TS-DPM against the authors' released code and against independent float64 NumPy code,
on the exact Gaussian-mixture denoiser.

* ``test_destination_mode_is_the_released_pnm_sampler``: a float64 port of the released
  ``PNMSolver.sample`` (Mingxiao-Li/TS-DPM at 146954f, ``sampler/pnm_solver.py``: the
  grid ``:86-98, 143``, the shift ``:100-127, 157-160``, ``euler`` = DDIM ``:213-234``,
  ``s_pndm`` ``:237-269``), in its own 0-based indices (``alphas_cump[i]`` is our step
  ``i + 1``), against ``TimeShift(..., "destination")`` on the ``tsdpm`` grid. F-PNDM is
  left out on purpose: the released code truncates its half-integer Runge-Kutta midpoints
  to integer indices (``alphas_cump[t.long()]``, ``:214, 291``) where we interpolate.
* ``test_matches_the_float64_reimplementation``: a self-consistency check of both modes on
  our own grids (it encodes our grid and cutoff convention; the reference test is above).
* the cutoff is the authors' 0-based index, on integer steps.
"""

import jax
import numpy as np
import pytest

from diffusion.analytic import make_mixture
from diffusion.schedules import make_schedule
from sampling.grids import make_grid
from sampling.loop import sample
from sampling.solvers import DDIM
from sampling.transforms import TimeShift
from tests.sampling.toys import make_solver

SCHED = make_schedule("linear")
T = 1000
D = 16  # elements per sample: ddof = 0 vs 1 changes the variance by 1/D
MIX = make_mixture(SCHED, np.stack([np.linspace(-0.8, 0.8, D), np.linspace(0.6, -0.2, D)]), [0.3, 0.5])
ALPHA_BAR = np.exp(SCHED.table)  # float64, our steps n = 0..T
ALPHAS_CUMP = np.cumprod(1.0 - np.linspace(1e-4, 0.02, T))  # the authors' 0-based alphas_cump (pnm_solver.py:68-77)


def np_x0(x, ab):
    """float64 posterior mean of the mixture at ``x [B, D]``, ``alpha_bar`` ``ab [B]``."""
    a, s2 = np.sqrt(ab)[:, None], (1 - ab)[:, None]
    means, var0 = np.asarray(MIX.means, np.float64), np.asarray(MIX.stds, np.float64) ** 2
    weights = np.asarray(MIX.weights, np.float64) / float(np.sum(MIX.weights))
    var = a**2 * var0[None] + s2  # [B, K]
    diff = x[:, None, :] - a[:, :, None] * means[None]
    logits = np.log(weights)[None] - 0.5 * D * np.log(var) - 0.5 * (diff**2).sum(-1) / var
    r = np.exp(logits - logits.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    return np.einsum("bk,bkd->bd", r, means[None] + (a * var0[None] / var)[:, :, None] * diff)


# ------------------------------------------------------------------ the released PNM sampler


class PNMPort:
    """``PNMSolver`` of ``sampler/pnm_solver.py`` in float64 NumPy, ``shift_time_step=True``,
    with the mixture's exact noise prediction as ``self.model(x, t)`` (``t``: 0-based indices)."""

    def __init__(self, window, cut_off_value):
        self.window_shift = int(window) // 2  # :35
        self.cut_off_value = cut_off_value
        self.alpha_list = 1.0 - ALPHAS_CUMP  # :82
        self.ets = []

    def model(self, x, t):
        ab = ALPHAS_CUMP[np.asarray(t, np.int64)]
        return (x - np.sqrt(ab)[:, None] * np_x0(x, ab)) / np.sqrt(1 - ab)[:, None]

    @staticmethod
    def make_time_steps(S):  # :86-98, discr_method "uniform"
        skip = T // S
        return (np.asarray(list(range(0, T, skip))) + 1)[:-1]

    def apply_time_shift(self, x_pre, t_next):  # :100-127
        var = np.var(x_pre.reshape(len(x_pre), -1), axis=-1, ddof=1)
        w = self.window_shift
        if t_next - w > 0 and t_next + w + 1 < len(self.alpha_list):
            time_list = self.alpha_list[t_next - w:t_next + w + 1]
        elif t_next - w <= 0:
            time_list = self.alpha_list[0:t_next + w + 1]
        else:
            raise AttributeError("'PNMSolver' object has no attribute 'alpha_bar'")  # :109, as released
        next_t = np.argmin((var[:, None] - time_list[None]) ** 2, axis=1)
        n_t = next_t + t_next - w if t_next - w > 0 else next_t
        return n_t if t_next > self.cut_off_value else np.full(len(x_pre), t_next)

    def transfer(self, x, t, t_next, et):  # :213-221
        at, at_next = ALPHAS_CUMP[t][:, None], ALPHAS_CUMP[t_next][:, None]
        x_delta = (at_next - at) * ((1 / (np.sqrt(at) * (np.sqrt(at) + np.sqrt(at_next)))) * x
                                    - 1 / (np.sqrt(at) * (np.sqrt((1 - at_next) * at)
                                                          + np.sqrt((1 - at) * at_next))) * et)
        return x + x_delta

    def euler_solver(self, x, t, t_next):  # :225-234
        return self.transfer(x, t, t_next, self.model(x, t))

    def improved_euler_solver(self, x, t, t_next):  # :237-249, return_noise=True
        e_1 = self.model(x, t)
        self.ets.append(e_1)
        x_2 = self.transfer(x, t, t_next, e_1)
        return (e_1 + self.model(x_2, t_next)) / 2

    def s_pndm(self, x, t, t_next):  # :252-269
        if len(self.ets) > 0:
            et = self.model(x, t)
            if len(self.ets) < 2:
                self.ets.append(et)
            else:
                self.ets[0] = self.ets[-1]
                self.ets[-1] = et
            et = 0.5 * (3 * self.ets[-1] - self.ets[-2])
        else:
            et = self.improved_euler_solver(x, t, t_next)
        return self.transfer(x, t, t_next, et)

    def sample(self, S, x_T, method):  # :131-166 (without the final image transform)
        time_seq = self.make_time_steps(S)
        time_seq_next = [0] + list(time_seq[:-1])
        img, b = np.asarray(x_T, np.float64), len(x_T)
        img_list = [img]
        for i, j in zip(reversed(time_seq), reversed(time_seq_next)):
            t = np.full(b, i)
            t_next = self.apply_time_shift(img_list[-1], j) if len(img_list) > 1 else np.full(b, j)
            img = (self.euler_solver if method == "euler" else self.s_pndm)(img, t, np.asarray(t_next, np.int64))
            img_list.append(img)
        return img


@pytest.mark.parametrize("method,solver", [("euler", "ddim"), ("s_pndm", "spndm")])
@pytest.mark.parametrize("S,window,cutoff", [(10, 20.0, 300.0), (20, 80.0, 550.0), (10, 20.0, 301.0)])
def test_destination_mode_is_the_released_pnm_sampler(method, solver, S, window, cutoff):
    """The released sampler at S = 10 runs 9 steps, 801 -> 701 -> ... -> 1 -> 0 in its
    indices: our ``tsdpm`` grid with 9 steps. Its index 301 is a destination: cutoff 300
    shifts it, 301 does not."""
    x_T = jax.random.normal(jax.random.PRNGKey(0), (32, D))
    grid = make_grid("tsdpm", S - 1, SCHED)
    got = sample(MIX, None, TimeShift(make_solver(solver, SCHED), window, cutoff, "destination"), grid, x_T)
    want = PNMPort(window, cutoff).sample(S, np.asarray(x_T), method)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-4)
    plain = PNMPort(0.0, T).sample(S, np.asarray(x_T), method)
    assert np.abs(plain - want).max() > 1e-2  # the shift matters here
    if cutoff == 301.0:  # ... and index 301 is its own choice: cutoff 300 shifts it
        at_300 = PNMPort(window, 300.0).sample(S, np.asarray(x_T), method)
        assert np.abs(at_300 - want).max() > 1e-3


def test_the_port_runs_the_released_grid():
    assert PNMPort.make_time_steps(10).tolist() == [1, 101, 201, 301, 401, 501, 601, 701, 801]
    indices = np.asarray(make_grid("tsdpm", 9, SCHED), np.float64) * T - 1  # our step n is their index n - 1
    np.testing.assert_allclose(indices, [801, 701, 601, 501, 401, 301, 201, 101, 1, 0], atol=1e-3)
    np.testing.assert_allclose(ALPHAS_CUMP, ALPHA_BAR[1:], rtol=1e-12)  # index i is our step i + 1


# ------------------------------------------------------------------ self-consistency


def np_ddim(x, n_from, n_to):
    x0 = np_x0(x, ALPHA_BAR[n_from])
    a_t, s_t = np.sqrt(ALPHA_BAR[n_from])[:, None], np.sqrt(1 - ALPHA_BAR[n_from])[:, None]
    eps = (x - a_t * x0) / s_t
    return np.sqrt(ALPHA_BAR[n_to])[:, None] * x0 + np.sqrt(1 - ALPHA_BAR[n_to])[:, None] * eps


def np_closest(x, center: int, window: float):
    """The step within ``|n - center| <= window // 2`` whose ``1 - alpha_bar`` is nearest
    each sample's unbiased variance."""
    var = np.var(x, axis=1, ddof=1)
    n = np.arange(max(0, center - int(window // 2)), min(T, center + int(window // 2)) + 1)
    return n[np.argmin((var[:, None] - (1 - ALPHA_BAR[n])[None]) ** 2, axis=1)]


def np_time_shift(x_T, steps, window, cutoff, mode):
    """Both modes on our steps ``n``; the cutoff on the authors' index ``n - 1``."""
    x, b = np.asarray(x_T, np.float64), x_T.shape[0]
    shifted = None
    for k in range(len(steps) - 1):
        t, t_next = steps[k], steps[k + 1]
        if mode == "query":
            query = shifted if (shifted is not None and t - 1 > cutoff) else np.full(b, t)
            x = np_ddim(x, query, np.full(b, t_next))
            shifted = np_closest(x, t_next, window) if t_next > 0 else None
        else:
            dest = np_closest(x, t_next, window) if (k > 0 and t_next - 1 > cutoff) else np.full(b, t_next)
            x = np_ddim(x, np.full(b, t), dest)
    return x


@pytest.mark.parametrize("mode", ["query", "destination"])
@pytest.mark.parametrize("grid_kind,steps,window,cutoff", [("uniform", 10, 40.0, 300.0), ("trailing", 20, 80.0, 550.0)])
def test_matches_the_float64_reimplementation(mode, grid_kind, steps, window, cutoff):
    x_T = jax.random.normal(jax.random.PRNGKey(0), (32, D))
    grid = make_grid(grid_kind, steps, SCHED)
    got = sample(MIX, None, TimeShift(DDIM(SCHED, 0.0), window, cutoff, mode), grid, x_T)
    want = np_time_shift(np.asarray(x_T), np.rint(np.asarray(grid, np.float64) * T).astype(int), window, cutoff, mode)
    plain = sample(MIX, None, DDIM(SCHED, 0.0), grid, x_T)
    assert np.abs(np.asarray(plain) - want).max() > 1e-2  # the shift matters here
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-4)


# ------------------------------------------------------------------ the cutoff


@pytest.mark.parametrize("mode,steps", [("query", 10), ("destination", 20)])
def test_the_cutoff_compares_integer_steps(mode, steps):
    """On trailing grids t = 0.9 is 900.00006 steps in float32, the authors' index 899. Query
    mode first queries a shifted time at grid point 1 (900 on the 10-step grid), destination
    mode first shifts a destination at step 1 (900 on the 20-step grid): with cutoff 899 both
    equal plain DDIM, with 898 both shift."""
    grid = make_grid("trailing", steps, SCHED)
    assert float(grid[steps // 10] * T) > 900.0  # the float time sits a hair above its step
    x_T = jax.random.normal(jax.random.PRNGKey(1), (16, D))
    plain = sample(MIX, None, DDIM(SCHED, 0.0), grid, x_T)
    at_899 = sample(MIX, None, TimeShift(DDIM(SCHED, 0.0), 200.0, 899.0, mode), grid, x_T)
    np.testing.assert_array_equal(np.asarray(at_899), np.asarray(plain))
    below = sample(MIX, None, TimeShift(DDIM(SCHED, 0.0), 200.0, 898.0, mode), grid, x_T)
    assert np.abs(np.asarray(below) - np.asarray(plain)).max() > 1e-3


@pytest.mark.parametrize("mode,moved", [("query", 0.21), ("destination", 0.041)])
def test_the_cutoff_is_the_authors_zero_based_index(mode, moved):
    """The uniform 10-step grid has our step 301 (the authors' index 300) as a grid point:
    cutoff 300 does not shift there (``t_next > cut_off_value`` on index 300), so it equals
    cutoff 301; cutoff 299 shifts there, which moves the samples by ``moved`` (before the
    fix, our cutoff 300 was their 299)."""
    grid = make_grid("uniform", 10, SCHED)
    assert round(float(grid[6]) * T) == 301
    x_T = jax.random.normal(jax.random.PRNGKey(0), (32, D))
    run = lambda c: np.asarray(sample(MIX, None, TimeShift(DDIM(SCHED, 0.0), 40.0, c, mode), grid, x_T))  # noqa: E731
    np.testing.assert_array_equal(run(300.0), run(301.0))
    assert np.abs(run(299.0) - run(300.0)).max() == pytest.approx(moved, abs=0.01)


def test_records_of_tag_version_2_keep_their_meaning(tmp_path):
    """Before tag version 3 the cutoff counted our steps (``round(t T) > C``), which is the
    authors' index ``C - 1``: an old record is renamed to ``C - 1``, never taken for the new
    ``C`` (the uniform grid's step 301 tells them apart, test above)."""
    import json

    from orchestration.workdir.records import load_records, record_fields
    from sampling.spec import TAG_VERSION, make_spec

    old = make_spec("ddim", 10, "uniform", time_shift="20:300", time_shift_mode="destination")
    plain = make_spec("ddim", 10, "uniform")
    records = [{"id": f"ckpt5/{s.tag()}/seed0/n100", "ckpt": 5, "seed": 0, "num": 100, "fd_digits": fd,
                **record_fields(s)} for s, fd in ((old, 3.5), (plain, 4.0))]
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"tag_version": 2, "records": records}))
    log = []
    got = load_records(path, log=log.append)
    new = make_spec("ddim", 10, "uniform", time_shift="20:299", time_shift_mode="destination")
    assert TAG_VERSION >= 3 and f"tag version 2 to version {TAG_VERSION}" in log[0]  # 4: FVDM plans (issue 26)
    assert got[0] == {"id": "ckpt5/ddim_10steps_uniform_ts20-299dest/seed0/n100", "ckpt": 5, "seed": 0, "num": 100,
                      "fd_digits": 3.5, **record_fields(new)}
    assert got[1] == records[1]
