"""Time grids."""

import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.schedules import make_schedule
from sampling.grids import GRIDS, make_grid

SCHED = make_schedule("linear")


def test_uniform_is_the_ddim_skip_grid():
    g = np.asarray(make_grid("uniform", 10, SCHED)) * 1000
    np.testing.assert_allclose(g, [901, 801, 701, 601, 501, 401, 301, 201, 101, 1, 0], atol=1e-3)


def test_trailing_starts_at_pure_noise():
    g = np.asarray(make_grid("trailing", 4, SCHED)) * 1000
    np.testing.assert_allclose(g, [1000, 750, 500, 250, 0], atol=1e-3)


def test_quadratic_is_dense_near_the_data():
    g = np.asarray(make_grid("quadratic", 10, SCHED)) * 1000
    steps = (np.linspace(0, np.sqrt(800), 10) ** 2).astype(int)[::-1] + 1
    np.testing.assert_allclose(g[:-1], steps, atol=1e-3)
    assert np.all(np.diff(np.diff(g[:-1])) > 0)  # gaps shrink towards t = 0


def test_logsnr_grid_is_uniform_in_logsnr():
    g = make_grid("logsnr", 8, SCHED)
    lam = np.asarray(SCHED.logsnr(g[:-1]))
    np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=2e-3)
    assert float(g[0]) == pytest.approx(1.0) and float(g[-2]) == pytest.approx(1e-3, rel=1e-2)


@pytest.mark.parametrize("n", [1, 10, 25, 50, 999])
def test_leading_is_stable_diffusions_ddim_grid(n):
    """diffusers' DDIMScheduler as SD 1.x / 2.x configure it: timesteps k are our t = (k + 1) / T,
    and the last step goes to alphas_cumprod[0], our t = 1 / T."""
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                    set_alpha_to_one=False, steps_offset=1, clip_sample=False)
    sched.set_timesteps(n)
    ours = make_schedule("scaled_linear", 1000)
    g = np.asarray(make_grid("leading", n, ours), np.float64)
    np.testing.assert_allclose(g[:-1] * 1000 - 1, sched.timesteps.numpy(), atol=1e-3)
    assert g[-1] * 1000 == pytest.approx(1.0)
    np.testing.assert_allclose(np.asarray(ours.alpha_bar(make_grid("leading", n, ours))),
                               np.r_[sched.alphas_cumprod.numpy()[sched.timesteps.numpy()], sched.final_alpha_cumprod],
                               rtol=2e-5)


def test_leading_refuses_a_grid_past_t_1():
    with pytest.raises(ValueError, match="starts past t = 1"):
        make_grid("leading", 1000, SCHED)


@pytest.mark.parametrize("S", [2, 4, 5, 10, 20, 25, 50, 100, 200])
def test_tsdpm_is_the_released_pnm_solver_grid(S):
    """``pnm_solver._make_time_steps`` (Mingxiao-Li/TS-DPM ``sampler/pnm_solver.py:86-98``,
    ``discr_method="uniform"``) and ``time_seq_next = [0] + time_seq[:-1]`` (``:143``): the
    authors' 0-based indices, which are our steps minus one; ``S - 1`` steps."""
    skip = 1000 // S
    time_seq = (np.asarray(list(range(0, 1000, skip))) + 1)[:-1]
    indices = list(reversed(time_seq)) + [0]  # the network's indices, then the last destination
    g = np.asarray(make_grid("tsdpm", S - 1, SCHED), np.float64) * 1000
    np.testing.assert_allclose(g - 1, indices, atol=1e-3)
    np.testing.assert_allclose(np.asarray(SCHED.alpha_bar(make_grid("tsdpm", S - 1, SCHED))),
                               np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[indices], rtol=2e-5)


def test_adm_is_space_timesteps():
    """ADM's ``space_timesteps(1000, [N])`` (FVDM's ``diffusion/respace.py:12-62`` at 9373f99),
    run on the reference's own code: its 0-based indices plus one, then 0."""
    g50 = np.rint(np.asarray(make_grid("adm", 50, SCHED), np.float64) * 1000).astype(int)
    assert g50[:6].tolist() == [1000, 980, 959, 939, 918, 898]
    assert g50[-7:].tolist() == [103, 83, 62, 42, 21, 1, 0] and len(g50) == 51
    g25 = np.rint(np.asarray(make_grid("adm", 25, SCHED), np.float64) * 1000).astype(int)
    assert g25[:6].tolist() == [1000, 958, 917, 875, 833, 792]
    assert g25[-7:].tolist() == [209, 167, 126, 84, 43, 1, 0]
    assert np.rint(np.asarray(make_grid("adm", 1000, SCHED)) * 1000)[:-1].tolist() == list(range(1000, 0, -1))


def test_uniform_is_not_the_tsdpm_grid():
    """``uniform`` is Song's DDIM grid (and ADM's ``ddimN``): one step more than the released
    PNM sampler at the same stride, every index one lower, ending on the data."""
    uniform = np.asarray(make_grid("uniform", 10, SCHED)) * 1000
    tsdpm = np.asarray(make_grid("tsdpm", 9, SCHED)) * 1000
    np.testing.assert_allclose(uniform[1:-1] + 1, tsdpm[:-1], atol=1e-3)
    assert uniform[-1] == 0 and tsdpm[-1] == pytest.approx(1.0)


@pytest.mark.parametrize("kind", GRIDS)
def test_every_grid_decreases_to_zero(kind):
    """... or, for ``leading`` and ``tsdpm`` (Stable Diffusion's schedulers, TS-DPM's PNM
    samplers), to one training step."""
    for n in (1, 5, 50):
        g = np.asarray(make_grid(kind, n, SCHED))
        end = 1e-3 if kind in ("leading", "tsdpm") else 0.0
        assert g.shape == (n + 1,) and g[-1] == np.float32(end) and np.all(np.diff(g) < 0) and g[0] <= 1.0


def test_bad_grids_are_clear_errors():
    with pytest.raises(ValueError, match="unknown time grid"):
        make_grid("fancy", 10, SCHED)
    with pytest.raises(ValueError, match="exceed"):
        make_grid("uniform", 2000, SCHED)
    with pytest.raises(ValueError, match="at least 1"):
        make_grid("uniform", 0, SCHED)
    assert make_grid("trailing", 3, make_schedule("cosine_logsnr")).dtype == jnp.float32


# ------------------------------------------------------------------------------------------ lcm (issue 26)

@pytest.mark.parametrize("n,want", [(1, [1.0, 0.0]), (2, [1.0, 0.5, 0.0]), (4, [1.0, 0.76, 0.5, 0.26, 0.0]),
                                    (8, [1.0, 0.88, 0.76, 0.64, 0.5, 0.38, 0.26, 0.14, 0.0])])
def test_lcm_grid_is_lcms_sampling_times_on_the_training_lattice(n, want):
    """LCM's multistep times (diffusers' LCMScheduler on its 50-point lattice), in our t =
    (timestep + 1) / T; every network time is a lattice point consistency distillation trains
    at (distill/consistency.py: trailing_time(k, 50, T)), bit for bit."""
    from sampling.grids import trailing_time

    g = np.asarray(make_grid("lcm", n, SCHED))
    np.testing.assert_allclose(g, want, atol=1e-6)
    lattice = set(np.asarray(trailing_time(np.arange(50), 50, 1000)).tolist())
    assert all(float(t) in lattice for t in g[:-1])


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6, 8, 13, 50])
def test_lcm_grid_equals_diffusers_lcm_scheduler(n):
    torch = pytest.importorskip("torch")  # noqa: F841 - diffusers' schedulers need it
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.LCMScheduler(num_train_timesteps=1000, original_inference_steps=50)
    sched.set_timesteps(n)
    want = (np.asarray(sched.timesteps) + 1) / 1000
    np.testing.assert_allclose(np.asarray(make_grid("lcm", n, SCHED))[:-1], want, atol=1e-6)


def test_lcm_times_on_another_lattice_and_too_many_steps():
    from sampling.grids import lcm_times

    np.testing.assert_allclose(lcm_times(4, 1000, skip=10) * 1000, [1000, 800, 500, 300])  # idx 0, 2, 5, 7 of 10
    with pytest.raises(ValueError, match="50 lattice times"):
        make_grid("lcm", 51, SCHED)


# ------------------------------------------------------------------------------------------ ends, sigma grids (issue 27)

def test_an_end_suffix_moves_the_last_time_only():
    for kind, ends in (("leading", (0, 1)), ("trailing", (0, 1)), ("linspace", (0,))):
        own = np.asarray(make_grid(kind, 10, SCHED))
        for end in ends:
            g = np.asarray(make_grid(f"{kind}@{end}", 10, SCHED))
            np.testing.assert_array_equal(g[:-1], own[:-1])
            assert g[-1] == np.float32(end / 1000)
    with pytest.raises(ValueError, match="repeats"):  # its last network time is already the first step
        make_grid("linspace@1", 10, SCHED)


@pytest.mark.parametrize("bad", ["leading@2", "leading@", "fancy@0", "@0"])
def test_a_bad_grid_end_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="time grid"):
        make_grid(bad, 10, SCHED)


@pytest.mark.parametrize("kind", ["karras", "dpm_karras"])
def test_karras_needs_a_discrete_schedule(kind):
    with pytest.raises(ValueError, match=f"the {kind} grid .* continuous"):
        make_grid(kind, 10, make_schedule("cosine_logsnr"))
