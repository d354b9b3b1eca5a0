"""Classifier-free guidance and the time-shift sampler as transforms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.analytic import make_mixture
from diffusion.schedules import make_schedule
from sampling import loop
from sampling.grids import make_grid
from sampling.loop import sample
from sampling.registry import ModelCaps
from sampling.spec import SamplerSpec, make_spec
from sampling.solvers import DDIM
from sampling.transforms import Guided, TimeShift
from sampling.transforms.time_shift import closest_time, sample_variance
from tests.sampling.toys import LabelMeans, make_solver, solver_names, stateless

SCHED = make_schedule("linear")
MEANS = jnp.array([[0.5, 0.5], [-0.5, 0.2]])


def test_guidance_closed_form_and_one_batched_call():
    seen = []

    class Spy(LabelMeans):
        def __call__(self, params, x_t, t, cond=None, **kw):
            seen.append(x_t.shape)
            return super().__call__(params, x_t, t, cond, **kw)

    den = Spy(SCHED, MEANS)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 2))
    labels = jnp.array([0, 1, 1, 0])
    for w in (0.0, 1.0, 3.0):
        seen.clear()
        pred, _ = Guided(den, w, null_label=2)(None, x, jnp.asarray(0.5), {"label": labels})
        assert seen == [(8, 2)]  # conditional + unconditional in one call
        np.testing.assert_allclose(np.asarray(pred.x0), w * np.asarray(MEANS)[np.asarray(labels)], atol=1e-6)
        a, s = SCHED.alpha_sigma(jnp.asarray(0.5))
        np.testing.assert_allclose(np.asarray(a * pred.x0 + s * pred.eps), np.asarray(x), atol=1e-5)


def test_guidance_pairs_every_input_with_its_null():
    """A text model's context with null_context, and any other input with its null_* (SDXL's pooled
    embedding and sizes): the unconditional half gets the nulls, the rest is repeated."""
    seen = {}

    class Record(LabelMeans):
        def __call__(self, params, x_t, t, cond=None, **kw):
            seen.update(cond)
            return super().__call__(params, x_t, t, {"label": jnp.zeros(x_t.shape[0], jnp.int32)}, **kw)

    cond = {"context": jnp.ones((2, 3, 4)), "null_context": jnp.zeros((2, 3, 4)), "text_embeds": jnp.ones((2, 5)),
            "null_text_embeds": -jnp.ones((2, 5)), "time_ids": jnp.full((2, 6), 7.0)}
    Guided(Record(SCHED, MEANS), 2.0, null_label=-1)(None, jnp.ones((2, 2)), jnp.asarray(0.5), cond)
    np.testing.assert_array_equal(np.asarray(seen["context"])[:, 0, 0], [1, 1, 0, 0])
    np.testing.assert_array_equal(np.asarray(seen["text_embeds"])[:, 0], [1, 1, -1, -1])
    np.testing.assert_array_equal(np.asarray(seen["time_ids"])[:, 0], [7, 7, 7, 7])
    with pytest.raises(ValueError, match="null conditions for inputs the batch does not have: \\['pooled'\\]"):
        Guided(Record(SCHED, MEANS), 2.0)(None, jnp.ones((2, 2)), jnp.asarray(0.5),
                                          {**cond, "null_pooled": jnp.ones((2, 5))})


def test_guidance_needs_labels():
    with pytest.raises(ValueError, match="class-conditional"):
        Guided(LabelMeans(SCHED, MEANS), 2.0)(None, jnp.ones((2, 2)), jnp.asarray(0.5), None)


def test_closest_time_is_the_windowed_argmin():
    rng = np.random.default_rng(0)
    var = jnp.asarray(rng.uniform(0.05, 1.0, 16), jnp.float32)
    center = jnp.asarray(rng.integers(50, 950, 16) / 1000, jnp.float32)
    for window in (0.0, 5.0, 30.0, 80.0):
        got = np.asarray(closest_time(SCHED, var, center, window)) * 1000
        noise = 1 - np.asarray(SCHED.alpha_bar(jnp.arange(1001) / 1000))
        for b in range(16):
            c = int(round(float(center[b]) * 1000))
            cand = np.arange(max(0, c - int(window // 2)), min(1000, c + int(window // 2)) + 1)
            best = cand[np.argmin((float(var[b]) - noise[cand]) ** 2)]
            assert got[b] == pytest.approx(best, abs=1e-3)


def steps_chosen(variance, center: int, window: float, **kw) -> float:
    """``closest_time`` in training steps for one variance and a centre step."""
    got = closest_time(SCHED, jnp.asarray([variance], jnp.float32), jnp.asarray(center / 1000, jnp.float32), window,
                       **kw)
    return float(got[0]) * 1000


def forward_variance(n: int, data_var: float) -> float:
    """``alpha_bar_n V0 + 1 - alpha_bar_n``: the expected variance of a sample at step ``n``."""
    ab = float(np.exp(SCHED.table[n]))
    return ab * data_var + 1.0 - ab


@pytest.mark.parametrize("variance,center,window,want", [
    (1.0, 601, 20.0, 611), (1.0, 601, 80.0, 641),  # unit-variance data: the top edge
    (forward_variance(601, 0.25), 601, 20.0, 611),  # 0.980824: the unconstrained optimum is 624
    (forward_variance(601, 0.25), 601, 80.0, 624),
    (forward_variance(401, 0.25), 401, 80.0, 435),  # 0.854821
])
def test_the_authors_rule_reads_the_signal_as_extra_noise(variance, center, window, want):
    """The authors' target ``1 - alpha_bar`` on a sample that has exactly its noise level:
    ``alpha_bar_m = alpha_bar_n (1 - V0)`` puts the match above the window's centre."""
    assert steps_chosen(variance, center, window) == pytest.approx(want, abs=1e-3)


@pytest.mark.parametrize("variance,center,window", [
    (forward_variance(601, 0.25), 601, 20.0), (forward_variance(601, 0.25), 601, 80.0),
    (forward_variance(401, 0.25), 401, 80.0)])
def test_the_marginal_target_keeps_an_unbiased_sample_at_its_time(variance, center, window):
    assert steps_chosen(variance, center, window, data_var=0.25) == pytest.approx(center, abs=1e-3)


def test_a_flat_target_keeps_the_centre():
    """At ``data_var = 1`` the target is 1 at every step: the variance says nothing, and the
    centre is kept (the bare argmin would take the window's first step, 591)."""
    assert steps_chosen(1.0, 601, 20.0, data_var=1.0) == pytest.approx(601, abs=1e-3)
    assert steps_chosen(1.3, 601, 80.0, data_var=1.0) == pytest.approx(601, abs=1e-3)


@pytest.mark.parametrize("kind", ["linear", "cosine", "scaled_linear", "cosine_logsnr"])
def test_the_authors_target_is_never_flat_across_a_window(kind):
    """So the flat-target rule never changes the authors' choice (``data_var = 0``)."""
    sched = make_schedule(kind)
    n = np.arange(sched.T + 1)
    target = np.asarray(1.0 - (1.0 - jnp.float32(0.0)) * sched.alpha_bar(jnp.asarray(n / sched.T, jnp.float32)))
    for h in (1, 2, 10, 40):
        assert np.all(target[np.minimum(n + h, sched.T)] != target[np.maximum(n - h, 0)]), (kind, h)


@pytest.mark.parametrize("dof,window,last", [(3072, 5.0, 230), (3072, 20.0, 454), (3072, 80.0, 602),
                                             (256, 20.0, 284), (256, 80.0, 472)])
def test_the_guard_shifts_only_where_the_window_is_resolved(dof, window, last):
    """``min_snr = 1`` with the authors' target: above step ``last`` the target's spread
    across the window is below one standard error of a ``dof``-element sample variance
    (CIFAR: 3072, the 8x8x4 scenes latents: 256), and the centre is kept."""
    centers = np.arange(50, 1000)
    far = jnp.full(centers.shape, 5.0, jnp.float32)  # a variance beyond every target: the top edge if allowed
    got = np.asarray(closest_time(SCHED, far, jnp.asarray(centers / 1000, jnp.float32), window, 0.0, 1.0, dof)) * 1000
    moved = centers[np.abs(got - centers) > 0.5]
    assert moved.max() == last and len(moved) == last - 50 + 1
    off = np.asarray(closest_time(SCHED, far, jnp.asarray(centers / 1000, jnp.float32), window, 0.0, 0.0, dof)) * 1000
    np.testing.assert_allclose(off, np.minimum(centers + window // 2, 1000), atol=1e-3)  # no guard: the top edge


@pytest.mark.parametrize("mode", ["query", "destination"])
def test_unit_variance_data_with_its_marginal_never_shifts(mode):
    """Zero-mean data of per-sample variance 0.6, 1.0 or 1.4 (V0 = 1, D = 256, like
    standardised latents): with ``data_var = 1`` (guard on or off) the shift is no shift,
    bit for bit (the time shift with its cutoff above every step), and the plain solver up to
    float32 rounding (per-sample times ``[B]`` instead of the grid's scalar); the authors'
    target moves the samples."""
    d = 256
    mix = make_mixture(SCHED, np.zeros((3, d)), np.sqrt([0.6, 1.0, 1.4]))
    grid = make_grid("uniform", 10, SCHED)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (16, d))
    run = lambda cutoff=300.0, **kw: np.asarray(  # noqa: E731
        sample(mix, None, TimeShift(DDIM(SCHED, 0.0), 20.0, cutoff, mode, **kw), grid, x_T))
    off = run(cutoff=1000.0)
    np.testing.assert_allclose(off, np.asarray(sample(mix, None, DDIM(SCHED, 0.0), grid, x_T)), atol=1e-5)
    for min_snr in (0.0, 1.0):
        np.testing.assert_array_equal(run(data_var=1.0, min_snr=min_snr), off)
    assert np.abs(run() - off).max() > 1e-3


def test_data_var_and_min_snr_sweep_without_recompiling_and_tag_when_set():
    mix = make_mixture(SCHED, np.stack([np.linspace(-0.8, 0.8, 16), np.linspace(0.6, -0.2, 16)]), [0.3, 0.5])
    x_T = jax.random.normal(jax.random.PRNGKey(0), (8, 16))

    def run(**kw):
        den, solver, grid = make_spec("ddim", 10, "uniform", time_shift="40:300", **kw).build(mix, ModelCaps())
        return np.asarray(sample(den, None, solver, grid, x_T))

    first = run(time_shift_data_var=0.0, time_shift_min_snr=0.0)
    size = loop._chain_jit._cache_size()
    assert np.abs(run(time_shift_data_var=0.5, time_shift_min_snr=0.0) - first).max() > 1e-4
    assert np.abs(run(time_shift_data_var=0.0, time_shift_min_snr=1.0) - first).max() > 1e-4
    assert loop._chain_jit._cache_size() == size, "data_var / min_snr recompiled"
    spec = make_spec("ddim", 10, "tsdpm", time_shift="20:300", time_shift_mode="destination",
                     time_shift_data_var=0.57, time_shift_min_snr=1)
    assert spec.tag() == "ddim_10steps_tsdpm_ts20-300dest-v0.57-snr1"
    assert SamplerSpec.parse(spec.to_string()) == spec
    assert make_spec("ddim", 10, time_shift="20:300", time_shift_data_var=0).tag() == "ddim_10steps_ts20-300"


@pytest.mark.parametrize("mode", ["query", "destination"])
@pytest.mark.parametrize("name", solver_names())
def test_zero_window_or_high_cutoff_is_the_plain_solver(mode, name):
    mix = make_mixture(SCHED, [[-1.0, 0.5], [1.0, -0.5]], [0.3, 0.2])
    x_T = jax.random.normal(jax.random.PRNGKey(0), (8, 2))
    grid = make_grid("uniform", 10, SCHED)
    base = make_solver(name, SCHED)
    plain = sample(mix, None, base, grid, x_T, None, jax.random.PRNGKey(1))
    for window, cutoff in [(0.0, 0.0), (40.0, 1000.0)]:
        shifted = sample(mix, None, TimeShift(base, window, cutoff, mode), grid, x_T, None, jax.random.PRNGKey(1))
        np.testing.assert_allclose(np.asarray(shifted), np.asarray(plain), rtol=1e-5, atol=1e-5)
    moved = sample(mix, None, TimeShift(base, 40.0, 0.0, mode), grid, x_T, None, jax.random.PRNGKey(1))
    assert np.abs(np.asarray(moved) - np.asarray(plain)).max() > 1e-4


def test_shift_follows_each_samples_variance():
    """A sample whose variance is too high for the next time is given a noisier time."""

    def run(x):
        solver = TimeShift(DDIM(SCHED, 0.0), 400.0, 0.0)
        mix = make_mixture(SCHED, [[0.0] * 1024], [0.5])
        st = solver.init(x, jax.random.PRNGKey(0))
        model = stateless(lambda x, t: mix(None, x, t)[0])  # noqa: E731
        return solver.step(st, model, jnp.asarray(0.6), jnp.asarray(0.5)).aux["shifted"]

    # after the step the variances are ~0.7 and ~0.9: inside the window's range of 1 - alpha_bar
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 1024)) * jnp.array([[0.86], [0.98]])
    s = np.asarray(run(x))
    nominal_var = 1 - float(SCHED.alpha_bar(jnp.asarray(0.5)))
    assert s[1] > s[0]  # the over-dispersed sample is placed later in the noise
    assert abs(s[0] - 0.5) <= 0.2 and abs(s[1] - 0.5) < 0.2  # inside the window, not at its edge
    assert float(sample_variance(x)[1]) > float(sample_variance(x)[0])
    assert 0.3 < nominal_var


@pytest.mark.parametrize("name", solver_names())
def test_time_shift_composes_with_guidance_and_every_solver(name):
    den = LabelMeans(SCHED, MEANS)
    x_T = jax.random.normal(jax.random.PRNGKey(0), (4, 2))
    cond = {"label": jnp.array([0, 1, 0, 1])}
    out = sample(Guided(den, 2.0, null_label=2), None, TimeShift(make_solver(name, SCHED), 20.0, 300.0),
                 make_grid("uniform", 10, SCHED), x_T, cond, jax.random.PRNGKey(1))
    # every sample lands on its guided target w * mean[label]. With an x0-constant model
    # the noise estimate is constant along an unshifted path, so PNDM is exact without the
    # shift; shifted query times make it vary, and PNDM's extrapolation of it is then only
    # close (F-PNDM: 0.07 here at 10 steps with a 20-step window; PLMS, the same multistep: 0.076).
    tol = 0.1 if "pndm" in name or name == "plms" else 1e-3
    np.testing.assert_allclose(np.asarray(out), 2.0 * np.asarray(MEANS)[[0, 1, 0, 1]], atol=tol)


def test_unknown_mode():
    with pytest.raises(ValueError, match="time-shift mode"):
        TimeShift(DDIM(SCHED), 5.0, 5.0, "both").init(jnp.ones((1, 2)), jax.random.PRNGKey(0))


def test_on_unit_variance_data_the_authors_rule_is_an_edge_coin_flip():
    """Samples with exactly their noise level on V0 = 1 data (D = 256, the scenes latents)
    have variance chi2_255 / 255 at every step: window 20 around steps 801 ... 301 puts them
    at the top edge with probability P(var > midpoint of the top two targets), 49 / 51 / 59
    / 78 / 98 / 100 %, at the bottom edge with the mirror probability, almost never inside.
    With ``data_var = 1`` nothing moves."""
    chi2 = pytest.importorskip("scipy.stats").chi2
    var = sample_variance(jax.random.normal(jax.random.PRNGKey(0), (4000, 256)))
    target = 1.0 - np.exp(SCHED.table)
    for n, top_share in ((801, 0.49), (701, 0.51), (601, 0.59), (501, 0.78), (401, 0.98), (301, 1.0)):
        got = np.rint(np.asarray(closest_time(SCHED, var, jnp.float32(n / 1000), 20.0), np.float64) * 1000)
        top, bottom = np.mean(got == n + 10), np.mean(got == n - 10)
        want_top = chi2.sf(255 * (target[n + 9] + target[n + 10]) / 2, 255)
        want_bottom = chi2.cdf(255 * (target[n - 10] + target[n - 9]) / 2, 255)
        assert want_top == pytest.approx(top_share, abs=0.01)
        assert top == pytest.approx(want_top, abs=0.03) and bottom == pytest.approx(want_bottom, abs=0.03)
        assert top + bottom > 0.93
        kept = np.asarray(closest_time(SCHED, var, jnp.float32(n / 1000), 20.0, data_var=1.0))
        np.testing.assert_array_equal(kept, np.float32(n / 1000))


def test_the_results_scripts_edge_shares():
    """``scripts/time_shift_results.edge_shares`` tallies the sampler's own choices: on V0 = 1
    data the authors' rule sits at the window's edges (the top one at 401), the marginal
    rule with ``data_var = 1`` keeps every sample at the centre."""
    import types

    from scripts.time_shift_results import edge_shares

    mix = make_mixture(SCHED, np.zeros((1, 256)), [1.0])
    run = types.SimpleNamespace(denoiser=mix, caps=ModelCaps())
    x_T = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (256, 256)))
    for mode, centres in (("query", [801, 701, 601, 501, 401]), ("destination", [701, 601, 501, 401])):
        authors = edge_shares(run, None, make_spec("ddim", 10, "uniform", time_shift="20:300", time_shift_mode=mode),
                              x_T, None)
        assert [e["n"] for e in authors] == centres  # cutoff 300: step 301 (index 300) is not shifted
        assert all(e["top"] + e["bottom"] > 0.9 for e in authors) and authors[-1]["top"] > 0.9
        marginal = edge_shares(run, None, make_spec("ddim", 10, "uniform", time_shift="20:300", time_shift_mode=mode,
                                                    time_shift_data_var=1.0), x_T, None)
        assert all(e["inside"] == 1.0 and e["mean_offset"] == 0.0 for e in marginal)
