"""TiUE's losses against closed forms and float64 recomputations (distill/tiue.py); its fake
score: test_tiue_fake_score.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.analytic import make_mixture
from distill.tiue import drop_cond, lattice_times, noise_kl, vsd_loss
from tests.distill.test_losses import SCHEDULE, np_alpha_sigma

MU_T, MU_S, STD = np.array([1.0, -0.5, 0.3]), np.array([-0.2, 0.4, 0.9]), 0.3


def test_the_vsd_gradient_moves_samples_toward_the_teacher_as_the_gaussian_closed_form_says():
    """Teacher N(mu_T, s^2), fake score N(mu_S, s^2) (exact denoisers): for every x_t,
    eps_T - eps_S = -(alpha / sigma)(1 - alpha^2 s^2 / v)(mu_T - mu_S), v = alpha^2 s^2 +
    sigma^2, so the loss's gradient in x0_hat is g / size with
    -g = sigma alpha (1 - alpha^2 s^2 / v)(mu_T - mu_S): a step toward the teacher's mean."""
    teacher, fake = make_mixture(SCHEDULE, [MU_T], STD), make_mixture(SCHEDULE, [MU_S], STD)
    b = 16
    x0 = jax.random.normal(jax.random.PRNGKey(0), (b, 3))
    t = lattice_times(jax.random.PRNGKey(1), b, 0.02, 0.98, SCHEDULE.T)
    alpha, sigma = SCHEDULE.alpha_sigma(t)
    x_t = alpha[:, None] * x0 + sigma[:, None] * jax.random.normal(jax.random.PRNGKey(2), (b, 3))
    eps_t, eps_s = teacher(None, x_t, t)[0].eps, fake(None, x_t, t)[0].eps
    grad = jax.grad(lambda x: vsd_loss(x, eps_t, eps_s, sigma))(x0) * x0.size

    a, s = np_alpha_sigma(np.asarray(t))
    v = a**2 * STD**2 + s**2
    want = -(s * a * (1 - a**2 * STD**2 / v)) * (MU_T - MU_S)[None]  # = g
    np.testing.assert_allclose(grad, want, rtol=2e-3, atol=1e-5)
    step = -np.asarray(grad)
    cos = step @ (MU_T - MU_S) / np.linalg.norm(step, axis=1) / np.linalg.norm(MU_T - MU_S)
    assert np.all(cos > 0.999)
    # the loss's value is 0.5 mean(g^2) and it vanishes when the fake score is the teacher
    np.testing.assert_allclose(vsd_loss(x0, eps_t, eps_s, sigma), 0.5 * np.mean(want**2), rtol=5e-3)
    assert float(vsd_loss(x0, eps_t, eps_t, sigma)) == 0.0


# Hand-built maps: K = 4, B = 2, map (k, b) = (0.25 k + 0.5 b) + (1 + 0.5 k) [-1, 1, -1, 1] (2 x 2 x 1): mean
# 0.25 k + 0.5 b, unbiased variance (4 / 3)(1 + 0.5 k)^2; KL_{k,b} = 0.5 (mu^2 + v - 1 - ln v) by hand.
_K, _B = np.arange(4)[:, None, None], np.arange(2)[None, :, None]
HAND_MAPS = ((0.25 * _K + 0.5 * _B) + (1 + 0.5 * _K) * np.array([-1.0, 1, -1, 1])).reshape(4, 2, 2, 2, 1)
HAND_KL = np.array([[0.0228256, 0.1478256], [0.4819439, 0.7319439], [1.4546785, 1.8296785], [2.8877849, 3.3877849]])


def reference_kl_divergence(noise, lambda_kl=0.0):
    """train_loopfree.py:407-427 at sen-mao/Loopfree 9a232a9, verbatim (torch)."""
    import torch

    total_kl_div = 0
    if lambda_kl > 0.0:
        for n in noise:
            mu = torch.mean(n)
            logvar = torch.std(n).pow(2).log()
            kl_div = torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) * (-0.5 * lambda_kl)
            total_kl_div += kl_div
    return total_kl_div


def test_noise_kl_sums_over_the_k_by_b_maps_with_the_unbiased_variance():
    maps = jnp.asarray(HAND_MAPS, jnp.float32)
    for k in range(4):
        for b in range(2):  # one map alone: its own KL
            np.testing.assert_allclose(noise_kl(maps[k:k + 1, b:b + 1], group=1), HAND_KL[k, b], rtol=1e-5)
    # group = B = 2: the sum over all K x B = 8 maps, as the reference's kl_divergence on one process
    np.testing.assert_allclose(0.1 * noise_kl(maps, group=2), 1.0944466, rtol=1e-6)
    np.testing.assert_allclose(0.1 * noise_kl(maps, group=0), 1.0944466, rtol=1e-6)  # 0: the whole batch
    # group = 1: the batch mean of the per-sample sums; ddof 0 with it: the code before issue 26
    np.testing.assert_allclose(0.1 * noise_kl(maps, group=1), 0.5472233, rtol=1e-6)
    np.testing.assert_allclose(0.1 * noise_kl(maps, group=1, ddof=0), 0.3797597, rtol=1e-6)
    unit = jnp.asarray([-1.0, 1.0, -1.0, 1.0]).reshape(1, 1, 2, 2, 1)
    np.testing.assert_allclose(noise_kl(unit), 0.0228256, rtol=1e-5)  # unbiased: v = 4/3, not 1
    assert abs(float(noise_kl(unit, ddof=0))) < 1e-7
    assert np.all(np.asarray(jax.grad(noise_kl)(unit + 0.5)) > 0)  # it pulls a map's mean to zero


def test_noise_kl_is_the_reference_kl_divergence_in_value_and_gradient():
    torch = pytest.importorskip("torch")
    maps = HAND_MAPS.reshape(8, 1, 2, 2)  # step-major [K * B, ...], as the reference's decoder batch
    np.testing.assert_allclose(float(reference_kl_divergence(torch.tensor(maps), 0.1)), 1.0944466, rtol=1e-6)
    rand = np.random.default_rng(0).normal(0.3, 1.4, (3, 8, 4, 4, 1)) + np.arange(8)[None, :, None, None, None] / 4
    x = torch.tensor(rand.reshape(24, 4, 4, 1), requires_grad=True)
    ref = reference_kl_divergence(x, 0.1)
    ref.backward()
    ours, grad = jax.value_and_grad(lambda m: 0.1 * noise_kl(m, group=8))(jnp.asarray(rand, jnp.float32))
    np.testing.assert_allclose(float(ours), float(ref.detach()), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad).reshape(24, 4, 4, 1), x.grad.numpy(), rtol=1e-5, atol=1e-8)


def test_kl_group_8_is_the_reference_runs_gradient_over_8_processes_of_8():
    """train_loopfree.sh: 8 DDP processes of batch 8, each adding lambda * kl_divergence of its own K x 8
    maps to its mean VSD loss, gradients averaged: equal to one batch of 64 with kl_group = 8."""
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, (64, 3))
    target = jax.random.normal(jax.random.PRNGKey(1), (64, 3))
    basis = jax.random.normal(jax.random.PRNGKey(2), (4, 3, 9))

    def loss(x, target):  # a stand-in student: maps [K, B, 9] and a mean-reduced loss, both of x
        maps = jnp.einsum("bi,kij->kbj", x, basis) + 0.3
        return 0.5 * jnp.mean((x - target) ** 2) + 0.1 * noise_kl(maps, group=8)

    whole = jax.grad(loss)(x, target)
    chunks = [jax.grad(loss)(x[i:i + 8], target[i:i + 8]) for i in range(0, 64, 8)]
    per_process = jnp.concatenate(chunks) / 8  # each process's gradient of its own 8 samples, averaged over 8
    np.testing.assert_allclose(whole, per_process, rtol=1e-5, atol=1e-8)


def test_lattice_times_and_condition_dropout():
    t = np.asarray(lattice_times(jax.random.PRNGKey(0), 4000, 0.02, 0.98, 1000))
    n = np.round(t * 1000)
    np.testing.assert_allclose(t * 1000, n, atol=1e-3)
    assert n.min() == 20 and n.max() == 980
    cond = {"label": jnp.array([1, 2, 3]), "context": jnp.ones((3, 2, 4)), "null_context": jnp.zeros((3, 2, 4))}
    out = drop_cond(cond, 10, jnp.array([True, False, True]))
    np.testing.assert_array_equal(out["label"], [10, 2, 10])
    np.testing.assert_array_equal(out["context"][:, 0, 0], [0, 1, 0])


@pytest.mark.parametrize("change, match", [
    ({"objective": "nope"}, "unknown distill.objective"), ({"steps": 0}, "steps must be >= 1"),
    ({"t_min": 0.5, "t_max": 0.4}, "t_min < distill.t_max"), ({"kl_weight": -1.0}, "kl_weight must be >= 0"),
    ({"kl_weight": float("nan")}, "kl_weight must be >= 0"), ({"fake_lr": 0.0}, "fake_lr > 0"),
    ({"fake_lr": float("nan")}, "fake_lr > 0"), ({"guidance": float("nan")}, "guidance >= 0"),
    ({"t_min": float("nan")}, "t_min < distill.t_max"), ({"steps": -2}, "steps must be >= 1"),
    ({"guidance": 3.0, "num_classes": None}, "needs a class- or text-conditional teacher")])
def test_bad_settings_are_named(change, match):
    from diffusion.nn.denoiser import Denoiser
    from diffusion.nn.unet import UNet
    from distill.tiue import tiue_distillation

    den = Denoiser(UNet(channels=8, channel_mult=(1,), num_res_blocks=1, attn_resolutions=(), out_channels=1),
                   SCHEDULE)
    kwargs = {"num_classes": 10, **change}
    with pytest.raises(ValueError, match=match):
        tiue_distillation(den, den, **kwargs)
    with pytest.raises(ValueError, match="encode/decode split"):
        tiue_distillation(make_mixture(SCHEDULE, [MU_T], STD), make_mixture(SCHEDULE, [MU_T], STD), num_classes=10)
    video = Denoiser(UNet(channels=8, channel_mult=(1,), num_res_blocks=1, attn_resolutions=(), out_channels=1,
                          temporal=True), SCHEDULE)
    with pytest.raises(ValueError, match="image model; this teacher is a video UNet"):
        tiue_distillation(video, video, num_classes=10)


def eps_den(schedule="scaled_linear"):
    from diffusion.nn.denoiser import Denoiser
    from diffusion.schedules import make_schedule
    from tests.sampling.test_loopfree import NET

    return Denoiser(NET, make_schedule(schedule), "eps")


def test_the_regression_baseline_targets_the_guided_teachers_k_step_ddim_sample_on_the_leading_grid():
    """objective=regress: the loss is the mean squared gap between the loop-free student's last
    sample and the guided teacher's own K-step DDIM sample from the same x_T (hand-rolled here),
    both on the default leading grid, ending at alpha_bar = 1 - beta_1 (diffusers' final_alpha_cumprod
    with set_alpha_to_one=False); the VSD loss's x0_hat is the same chain."""
    from distill.tiue import tiue_distillation
    from sampling.grids import make_grid
    from sampling.loopfree import loopfree_chain
    from sampling.solvers.ddim import ddim_update
    from tests.sampling.test_loopfree import PARAMS, noisy

    den = eps_den()
    sched = den.schedule
    student = noisy(PARAMS, key=9)
    labels = jnp.array([0, 1, 2, 1])
    batch = {"image": jnp.zeros((4, 8, 8, 1)), "label": labels}
    key = jax.random.PRNGKey(4)
    x_T = jax.random.normal(jax.random.split(key, 4)[0], (4, 8, 8, 1))
    grid = make_grid("leading", 3, sched)
    np.testing.assert_allclose(grid, [0.668, 0.335, 0.002, 0.001], atol=1e-7)  # diffusers' [667, 334, 1]
    np.testing.assert_allclose(sched.alpha_sigma(grid[-1])[0] ** 2, 1 - 0.00085, rtol=1e-6)
    x = x_T
    for k in range(3):
        c = den(PARAMS, x, grid[k], {"label": labels})[0]
        u = den(PARAMS, x, grid[k], {"label": jnp.full_like(labels, 3)})[0]
        (a_t, s_t), (a_s, s_s) = sched.alpha_sigma(grid[k]), sched.alpha_sigma(grid[k + 1])
        x = ddim_update(u.x0 + 2.0 * (c.x0 - u.x0), u.eps + 2.0 * (c.eps - u.eps), a_s, s_s, a_t, s_t, 0.0,
                        jnp.zeros_like(x))
    x0_hat = loopfree_chain(den, student, grid, x_T, {"label": labels})[0]
    want = np.mean(np.square(np.asarray(x0_hat, np.float64) - np.asarray(x, np.float64)))
    method = tiue_distillation(den, den, steps=3, guidance=2.0, objective="regress", num_classes=3, fake_lora_rank=4)
    state = type("S", (), {"extra": method.init_extra(student, PARAMS)})()
    loss, aux = jax.jit(lambda p, b, k: method.loss_fn(p, b, k, state))(student, batch, key)
    np.testing.assert_allclose(aux["carry"]["x0"], x0_hat, atol=1e-5)  # the loss's chain (VSD's too: one code path)
    assert float(aux["distill_loss"]) == pytest.approx(want, rel=1e-4) and want > 1e-4


def test_the_kl_reads_an_eps_students_raw_outputs_one_to_one():
    """The reference's KL acts on the decoder's K raw eps maps (train_loopfree.py:864 on :389): for an
    eps student the chain's eps maps are its raw outputs, bit for bit, and map k depends on raw
    output k alone, with derivative 1."""
    from sampling.grids import make_grid
    from sampling.loopfree import ddim_chain

    den = eps_den()
    grid = make_grid("leading", 4, den.schedule)
    raw = jax.random.normal(jax.random.PRNGKey(0), (4, 2, 2, 2, 1)) * 3
    x_T = jax.random.normal(jax.random.PRNGKey(1), (2, 2, 2, 1))
    np.testing.assert_array_equal(ddim_chain(den, raw, grid, x_T)[1], raw)
    jac = jax.jacobian(lambda r: ddim_chain(den, r, grid, x_T)[1])(raw).reshape(raw.size, raw.size)
    np.testing.assert_array_equal(jac, np.eye(raw.size))


def test_a_v_students_derived_eps_maps_barely_depend_on_its_first_outputs():
    """kl_on=derived_eps on a v student (the declared :v variant, and the code before issue 26):
    eps_k = sigma_k x_k + alpha_k v_k, so d eps_k / d v_k = alpha(t_k): 0.0064, 0.0579, 0.2803, 0.7239
    on the linear schedule's trailing 4-step grid (1 for an eps student)."""
    from diffusion.nn.denoiser import Denoiser
    from sampling.grids import make_grid
    from sampling.loopfree import ddim_chain
    from tests.sampling.test_loopfree import NET, SCHED

    den = Denoiser(NET, SCHED, "v")
    grid = make_grid("trailing", 4, SCHED)
    raw = jax.random.normal(jax.random.PRNGKey(0), (4, 1, 1, 1, 1))
    x_T = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 1, 1))
    jac = jax.jacobian(lambda r: ddim_chain(den, r, grid, x_T)[1])(raw).reshape(4, 4)
    np.testing.assert_allclose(np.diag(jac), [0.0064, 0.0579, 0.2803, 0.7239], atol=1e-4)
    np.testing.assert_array_equal(np.triu(jac, 1), 0)  # no map reads a later output


def test_raw_eps_refuses_a_v_student_and_names_the_fix():
    from distill.registry import Teacher, TeacherError
    from distill.tiue import _check_teacher, tiue_distillation
    from diffusion.nn.denoiser import Denoiser
    from tests.sampling.test_loopfree import NET, SCHED
    import ml_collections

    v = Denoiser(NET, SCHED, "v")
    with pytest.raises(ValueError, match="kl_on=raw_eps .* needs an eps-prediction student; this one predicts 'v'.*"
                                         "kl_on=derived_eps"):
        tiue_distillation(v, v, num_classes=3)
    tiue_distillation(v, v, num_classes=3, kl_on="derived_eps", fake_lora_rank=4)  # the declared variant
    tiue_distillation(v, v, num_classes=3, kl_weight=0.0, fake_lora_rank=4)  # no KL: nothing to read
    settings = ml_collections.ConfigDict({"guidance": 4.5, "kl_on": "raw_eps", "kl_weight": 0.1})
    with pytest.raises(TeacherError, match="needs an eps-prediction student; this one predicts 'v'"):
        _check_teacher(settings, Teacher("runs/digits_v", "v", 10, 0.1, False))
    _check_teacher(settings, Teacher("runs/digits_sd_eps", "eps", 10, 0.1, False))


def test_the_leading_grid_is_diffusers_ddim_of_stable_diffusion():
    """distill.grid = leading: SD's DDIMScheduler (steps_offset 1, set_alpha_to_one False) at 4 steps,
    timesteps [751, 501, 251, 1] (our t = (d + 1) / T), the last step to alphas_cumprod[0]; an eps
    student's loop-free chain on it equals diffusers' scheduler.step chain of the same outputs."""
    diffusers = pytest.importorskip("diffusers")
    import torch
    from diffusion.schedules import make_schedule
    from sampling.grids import make_grid
    from sampling.loopfree import ddim_chain

    lin = make_grid("leading", 4, make_schedule("linear"))
    np.testing.assert_allclose(lin, [0.752, 0.502, 0.252, 0.002, 0.001], atol=1e-7)
    np.testing.assert_array_equal(np.round(np.asarray(lin[:-1]) * 1000) - 1, [751, 501, 251, 1])
    sched = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                    set_alpha_to_one=False, steps_offset=1, clip_sample=False)
    sched.set_timesteps(4)
    assert sched.timesteps.tolist() == [751, 501, 251, 1]
    den = eps_den()
    grid = make_grid("leading", 4, den.schedule)
    rng = np.random.default_rng(0)
    raw, x_T = rng.normal(size=(4, 2, 4, 4, 2)), rng.normal(size=(2, 4, 4, 2))
    x = torch.tensor(x_T)
    for k, t in enumerate(sched.timesteps):
        x = sched.step(torch.tensor(raw[k]), t, x).prev_sample
    ours = ddim_chain(den, jnp.asarray(raw, jnp.float32), grid, jnp.asarray(x_T, jnp.float32))[0]
    np.testing.assert_allclose(ours, x.numpy(), atol=2e-5)


def test_students_train_and_sample_on_their_methods_grid():
    """student_config: TiUE's sample and eval samplers are its own grid (leading; k1 trailing);
    a method that names none keeps the trailing grid."""
    import types

    from configs import digits_progressive, digits_sd_eps, digits_tiue
    from orchestration.experiments.distillation import student_config

    teacher = types.SimpleNamespace(config=digits_sd_eps.get_config())
    c = student_config(digits_tiue.get_config(), teacher)
    assert c.sample.sampler == c.eval.sampler == "solver=ddim;steps=4;grid=leading;loopfree=on"
    c = student_config(digits_tiue.get_config("k1"), teacher)
    assert c.eval.sampler == "solver=ddim;steps=1;grid=trailing;loopfree=on"
    c = student_config(digits_progressive.get_config(), teacher)
    assert c.eval.sampler.startswith("solver=ddim;") and "grid=trailing" in c.eval.sampler


def test_the_defaults_are_the_reference_runs():
    """train_loopfree.sh / train_loopfree.py at 9a232a9: guidance 4.5, VSD's diffusers timesteps 20..980
    (torch.randint(20, 981)), the leading grid, the KL grouped by 8 with ddof 1 on the raw eps, LoRA 64 /
    108 on q and v with Adam 1e-3 clipped at 1.0, batch dropout; constant learning rate, EMA 0.9999."""
    from configs import digits_tiue
    from distill import registry

    d = registry.get("tiue").defaults
    assert (d["guidance"], d["t_min"], d["t_max"], d["grid"], d["steps"]) == (4.5, 0.021, 0.981, "leading", 4)
    assert (d["kl_weight"], d["kl_group"], d["kl_ddof"], d["kl_on"]) == (0.1, 8, 1, "raw_eps")
    assert (d["fake"], d["fake_lora_rank"], d["fake_lora_alpha"], d["fake_lora_targets"]) == ("lora", 64, 108.0,
                                                                                              "query,value")
    assert (d["fake_lr"], d["fake_grad_clip"], d["fake_cond_drop"], d["fake_cond_drop_mode"]) == (1e-3, 1.0, 0.1,
                                                                                                   "batch")
    n = np.round(np.asarray(lattice_times(jax.random.PRNGKey(0), 4000, 0.021, 0.981, 1000)) * 1000)
    assert n.min() - 1 == 20 and n.max() - 1 == 980  # diffusers' timestep d = n - 1
    c = digits_tiue.get_config()
    assert c.distill.teacher_workdir == "runs/digits_sd_eps"
    assert (c.train.lr_schedule, c.train.warmup_steps, c.train.ema_decay, c.train.grad_clip) == ("constant", 0, 0.9999,
                                                                                                 1.0)


def test_our_ema_decay_is_diffusers_emamodels():
    """--use_ema: diffusers' EMAModel(decay=0.9999), min(0.9999, (1 + s) / (10 + s)) at its update s + 1 (its
    first update copies: decay 0; ours 0.1)."""
    pytest.importorskip("diffusers")
    import torch
    from diffusers.training_utils import EMAModel

    from diffusion.train.step import ema_decay_at

    ema = EMAModel([torch.nn.Parameter(torch.zeros(1))], decay=0.9999)
    steps = np.array([1, 2, 10, 100, 999, 5000, 200_000])
    ours = np.asarray(jax.vmap(lambda s: ema_decay_at(s, 0.9999))(jnp.asarray(steps)))
    np.testing.assert_allclose(ours, [ema.get_decay(int(s) + 1) for s in steps], rtol=1e-6)


def test_the_sd_eps_teacher_has_sds_noise_levels_on_the_leading_grid():
    from configs import digits_sd_eps
    from orchestration.build.builders import build_schedule
    from sampling.grids import make_grid

    c = digits_sd_eps.get_config()
    assert (c.diffusion.schedule, c.model.pred_type, c.diffusion.weighting) == ("scaled_linear", "eps", "eps")
    sched = build_schedule(c.diffusion)
    alpha = sched.alpha_sigma(make_grid("leading", 4, sched))[0]
    np.testing.assert_allclose(alpha[:4], [0.2360, 0.5244, 0.8198, 0.9991], atol=1e-4)


def test_old_tiue_work_directories_read_as_they_ran_and_legacy_is_the_old_run():
    """configs/common.py: upgrade_config fills the fields TiUE gained in issue 26 with what its older
    runs did (so they resume and report as they ran); configs/digits_tiue.py:legacy is that run."""
    import json

    from configs import digits_tiue
    from configs.common import upgrade_config
    from distill.tiue import LEGACY
    from orchestration.workdir.directory import to_json_dict

    old = to_json_dict(digits_tiue.get_config("legacy"))
    for key in LEGACY:
        del old["distill"][key]
    for key in ("fake_lora_rank", "fake_lora_alpha", "fake_lora_targets"):
        del old["distill"][key]
    up = upgrade_config(json.loads(json.dumps(old)))["distill"]
    assert {k: up[k] for k in LEGACY} == LEGACY
    assert up == to_json_dict(digits_tiue.get_config("legacy"))["distill"]
    assert (up["guidance"], up["t_min"], up["kl_on"], up["fake"]) == (3.0, 0.02, "derived_eps", "full")
    new = to_json_dict(digits_tiue.get_config())
    assert upgrade_config(new)["distill"] == new["distill"]
