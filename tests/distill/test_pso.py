"""PSO's losses against float64, its Gaussian transitions against DDIM, the method's
invariants at the start (tuned == reference: log 2, the diffusion loss's gradient), its
configs, and its references (sampled, read from a file, cached in the work directory).
The authors' times, weighting and online loss: test_pso_reference.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.nn.denoiser import Denoiser
from distill import pso, pso_online, pso_references
from sampling.grids import make_grid
from sampling.loop import sample
from sampling.solvers.ddim import DDIM, ddim_update
from tests.sampling.test_loopfree import NET, PARAMS, SCHED

DEN = Denoiser(NET, SCHED, "v")
RNG = np.random.default_rng(0)


def log_sigmoid(z):
    return -np.log1p(np.exp(-z))


def test_dpo_and_hinge_against_float64():
    lw, ll, rw, rl = (RNG.uniform(0.01, 0.5, size=6) for _ in range(4))
    beta, lam = 5.0, 0.1
    for prior in (0.0, 0.5, 1.0):  # the prior term is on both (train_pso_sdxl_turbo_dreambooth.py:1889-1893)
        want = np.mean(-log_sigmoid(beta * ((rw - lam * rl) - (lw - lam * ll)))) + prior * np.mean(ll)
        got = pso.dpo_loss(*(jnp.asarray(a, jnp.float32) for a in (lw, ll, rw, rl)), beta, lam, prior)
        assert float(got) == pytest.approx(want, rel=1e-5)
        want = np.mean(np.maximum(0.0, 1.0 - beta * -(lw - lam * ll))) + prior * np.mean(ll)
        got = pso.hinge_loss(jnp.asarray(lw), jnp.asarray(ll), beta, lam, prior)
        assert float(got) == pytest.approx(want, rel=1e-5)
    # the DPO loss at tuned == reference is log 2 (+ the prior), and lowering the target's error lowers it
    assert float(pso.dpo_loss(lw, ll, lw, ll, beta, lam, 0.0)) == pytest.approx(np.log(2.0), rel=1e-6)
    assert float(pso.dpo_loss(lw, ll, lw, ll, beta, lam, 0.5)) == pytest.approx(np.log(2.0) + 0.5 * ll.mean(), rel=1e-6)
    assert float(pso.dpo_loss(lw * 0.5, ll, lw, ll, beta, lam, 0.0)) < np.log(2.0)


def test_gaussian_logprob_and_clipped_ratio_against_float64():
    x, mean = RNG.normal(size=(3, 4, 4, 1)), RNG.normal(size=(3, 4, 4, 1))
    std = RNG.uniform(0.2, 1.0, size=3)
    want = np.mean((-0.5 * ((x - mean) / std[:, None, None, None]) ** 2 - np.log(std[:, None, None, None])
                    - 0.5 * np.log(2 * np.pi)).reshape(3, -1), axis=1)
    np.testing.assert_allclose(pso_online.gaussian_logprob(jnp.asarray(x), jnp.asarray(mean), jnp.asarray(std)), want,
                               rtol=1e-5)
    r = pso_online.clipped_log_ratio(jnp.array([0.5, -0.5, 0.01]), jnp.zeros(3), 0.1)
    np.testing.assert_allclose(np.exp(r), [1.1, 0.9, np.exp(0.01)], rtol=1e-6)
    assert float(pso_online.online_loss(jnp.zeros((3, 8)), jnp.array([1.0, -1.0, 0.0, 1.0]), 50.0)) == pytest.approx(
        np.log(2.0))


def test_the_transition_is_ddims_step_and_trajectories_at_eta_0_are_ddim_samples():
    grid = make_grid("trailing", 4, SCHED)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 1))
    cond = {"label": jnp.array([0, 1, 2])}
    t, s = jnp.full((3,), grid[1]), jnp.full((3,), grid[2])
    for eta in (0.0, 1.0):
        mean, std = pso_online.ddim_transition(DEN, PARAMS, x, t, s, cond, eta)
        pred = DEN(PARAMS, x, t, cond)[0]
        (a_t, s_t), (a_s, s_s) = SCHED.alpha_sigma(t), SCHED.alpha_sigma(s)
        noise = jax.random.normal(jax.random.PRNGKey(1), x.shape)
        step = ddim_update(pred.x0, pred.eps, a_s, s_s, a_t, s_t, eta, noise)
        np.testing.assert_allclose(mean + std[:, None, None, None] * noise, step, atol=1e-5)
        assert (float(std.max()) > 0) == (eta > 0)
    states = pso_online.trajectories(DEN, PARAMS, grid, x, cond, 0.0, jax.random.PRNGKey(2))
    assert states.shape == (5, 3, 8, 8, 1)
    np.testing.assert_allclose(states[-1], sample(DEN, PARAMS, DDIM(SCHED), grid, x, cond), atol=1e-5)
    # eta 1: the last step to t = 0 is deterministic (std 0), the others are not
    stds = [pso_online.ddim_transition(DEN, PARAMS, x, jnp.full((3,), grid[k]), jnp.full((3,), grid[k + 1]), cond, 1.0)[1]
            for k in range(4)]
    assert all(float(v.min()) > 0 for v in stds[:3]) and float(stds[3].max()) == 0.0


def _batch():
    images = jax.random.uniform(jax.random.PRNGKey(5), (4, 8, 8, 1), minval=-1, maxval=1)
    return {"image": images, "label": jnp.array([0, 1, 2, 1], jnp.int32)}


@functools.cache
def refs():
    """The frozen student's 6 references (3 steps, seed 0) of the 3 classes."""
    return pso_references.sample_references(DEN, PARAMS, 3, 6, 0, 3, (8, 8, 1))


def _method(**kwargs):
    method = pso.pso_tuning(DEN, **{"steps": 3, "num_classes": 3, "references": refs(), **kwargs})
    return method, type("S", (), {"extra": method.init_extra(PARAMS, PARAMS)})()


def test_offline_references_are_the_frozen_students_samples_cycling_the_labels():
    method, state = _method()
    extra = state.extra
    np.testing.assert_array_equal(extra.labels, [0, 1, 2, 0, 1, 2])
    x_T = jax.random.normal(jax.random.PRNGKey(0), (6, 8, 8, 1))
    want = sample(DEN, PARAMS, DDIM(SCHED), make_grid("trailing", 3, SCHED), x_T, {"label": extra.labels})
    np.testing.assert_allclose(extra.images, want, atol=1e-5)
    # the hinge loss recomputed by hand from the same draws pairs each target with a reference of its label
    batch, key = _batch(), jax.random.PRNGKey(3)
    value, aux = method.loss_fn(PARAMS, batch, key, state)
    k_ref, k_t, k_eps = jax.random.split(key, 3)
    idx = batch["label"] + 3 * jax.random.randint(k_ref, (4,), 0, 2)
    assert np.all(np.asarray(extra.labels[idx]) == np.asarray(batch["label"]))
    t = jnp.asarray([0.668, 0.335, 0.002], jnp.float32)[jax.random.randint(k_t, (4,), 0, 3)]  # the reference's K = 3
    eps = jax.random.normal(k_eps, (4, 8, 8, 1))
    err = lambda x: np.mean(np.square(np.asarray(  # noqa: E731  eps-MSE, the reference's sigma_EDM^-2 x0 error
        DEN(PARAMS, SCHED.alpha_sigma(t)[0][:, None, None, None] * x + SCHED.alpha_sigma(t)[1][:, None, None, None]
            * eps, t, {"label": batch["label"]})[0].eps - eps, np.float64)).reshape(4, -1), axis=1)
    lw, ll = err(batch["image"]), err(extra.images[idx])
    want = np.mean(np.maximum(0.0, 1.0 + 5.0 * (lw - 0.1 * ll))) + 0.5 * np.mean(ll)
    assert float(value) == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("kwargs, match", [
    ({"loss": "sft"}, "unknown distill.loss"), ({"mode": "live"}, "unknown distill.mode"),
    ({"beta": float("nan")}, "beta > 0"), ({"clip": 1.0}, "0 < clip < 1"),
    ({"mode": "online", "steps": 1}, "1-step student"), ({"mode": "online", "reward": "beauty"}, "unknown reward"),
    ({"mode": "online", "loss": "diffusion"}, "offline baseline"), ({"num_references": 7}, "multiple of the 3"),
    ({"num_references": 0}, "positive multiple"), ({"steps": 0}, "steps >= 1"), ({"lam": -0.1}, "lam >= 0"),
    ({"online_eta": float("nan")}, "0 < online_eta <= 1"), ({"online_eta": 1.5}, "0 < online_eta <= 1"),
    ({"weighting": "l1"}, "unknown distill.weighting"), ({"pair_times": "trailing"}, "unknown distill.pair_times"),
    ({"pair_weighting": "l1"}, "unknown distill.pair_weighting"), ({"prior_weight": -1.0}, "prior_weight >= 0"),
    ({"online_kernel": "lcm"}, "unknown distill.online_kernel"),
    ({"online_transitions": "last"}, "unknown distill.online_transitions"),
])
def test_bad_settings_are_named(kwargs, match):
    settings = {"steps": 4, "loss": "hinge", "mode": "offline", "beta": None, "lam": 0.1, "clip": 0.1,
                "online_eta": 1.0, "weighting": "v", "reward": "thick", "num_references": 6, "num_classes": 3}
    with pytest.raises(ValueError, match=match):
        pso.check_settings(**{**settings, **kwargs})
    if "num_references" not in kwargs:  # pso_tuning checks the same
        with pytest.raises(ValueError, match=match):
            pso.pso_tuning(DEN, **{"num_classes": 3, "references": refs(), **kwargs})


@pytest.mark.parametrize("loss, beta, lam, prior, scale", [
    ("dpo", 5.0, 0.0, 0.0, 2.5), ("dpo", None, 0.0, 0.0, 100.0), ("hinge", 5.0, 0.1, 0.5, 5.0),
    ("hinge", None, 0.1, 0.5, 5.0)])
def test_the_pair_loss_reduces_to_the_eps_diffusion_loss_on_the_targets(loss, beta, lam, prior, scale):
    """At the start (tuned == reference) the DPO loss's gradient is exactly beta / 2 times the
    targets' eps-MSE diffusion loss at the reference times when lam = 0 and prior = 0
    (sigmoid(0) = 1/2; beta None is DPO's 200); the hinge with the released constants
    (beta 5, lam 0.1, prior 0.5) is 5 times it wherever it is active: the reference term's
    beta * lam cancels the prior term's 1/2, so the references do nothing."""
    method, state = _method(loss=loss, lam=lam, beta=beta, prior_weight=prior)
    batch, key = _batch(), jax.random.PRNGKey(7)
    _, k_t, k_eps = jax.random.split(key, 3)
    t = pso.reference_times(3, SCHED)[jax.random.randint(k_t, (4,), 0, 3)]
    eps = jax.random.normal(k_eps, (4, 8, 8, 1))

    def diffusion_loss(p):  # the targets' eps-MSE at the same draws
        a, s = SCHED.alpha_sigma(t)
        x_t = a[:, None, None, None] * batch["image"] + s[:, None, None, None] * eps
        return jnp.mean(jnp.square(DEN(p, x_t, t, {"label": batch["label"]})[0].eps - eps))

    loss_of = jax.jit(jax.value_and_grad(lambda p, extra: method.loss_fn(p, batch, key, type("S", (), {
        "extra": extra})())[0]))
    value, got = loss_of(PARAMS, state.extra)
    if loss == "dpo":  # and at tuned == reference the DPO loss is log 2 (online: tests/launch/test_distill.py)
        assert float(value) == pytest.approx(np.log(2.0), rel=1e-5)  # two float32 calls, scaled by beta
    want = jax.jit(jax.grad(diffusion_loss))(PARAMS)
    top = max(float(np.abs(w).max()) for w in jax.tree.leaves(want))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, scale * w, rtol=2e-3, atol=1e-5 * scale * top)
    if loss == "hinge":  # and the references do nothing: other references, the same gradient
        moved = loss_of(PARAMS, state.extra.replace(images=-state.extra.images))[1]
        for g, m in zip(jax.tree.leaves(got), jax.tree.leaves(moved)):
            np.testing.assert_allclose(g, m, rtol=2e-3, atol=1e-5 * scale * top)


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_a_references_file_is_read_in_cycling_order_and_every_flaw_is_named(tmp_path):
    images, labels = refs()
    order = np.array([3, 1, 5, 0, 2, 4])  # labels [0, 1, 2, 0, 1, 2] shuffled
    path = _write(tmp_path / "refs.npz", images=images[order], labels=labels[order])
    got_images, got_labels = pso_references.read_references(path, (8, 8, 1), 3)
    np.testing.assert_array_equal(got_labels, [0, 1, 2, 0, 1, 2])
    for i, label in enumerate(got_labels):  # each row is one of the file's images of that label
        assert any(np.array_equal(got_images[i], images[j]) for j in range(6) if labels[j] == label)
    bad = {
        "no such references file": tmp_path / "absent.npz",
        "not a readable .npz": tmp_path / "damaged.npz",
        r"lacks \['labels'\]": _write(tmp_path / "a.npz", images=images),
        r"shape \(6, 4, 4, 1\); the model's samples are \(8, 8, 1\)":
            _write(tmp_path / "b.npz", images=images[:, :4, :4], labels=labels),
        "must be finite floats": _write(tmp_path / "c.npz", images=np.where(images > 0, np.nan, images), labels=labels),
        r"labels must be 6 integers in \[0, 3\)": _write(tmp_path / "d.npz", images=images, labels=labels + 1),
        r"same number of references; counts \[3, 2, 1\]":
            _write(tmp_path / "e.npz", images=images, labels=np.array([0, 0, 0, 1, 1, 2])),
    }
    (tmp_path / "damaged.npz").write_bytes(path.read_bytes()[:200])
    for match, file in bad.items():
        with pytest.raises(ValueError, match=match) as e:
            pso_references.read_references(file, (8, 8, 1), 3)
        assert str(file) in str(e.value)


def test_a_run_takes_its_cache_else_the_settings_file_else_samples_and_refuses_a_lost_cache(tmp_path):
    from ml_collections import ConfigDict

    images, labels = refs()
    settings = ConfigDict({"references": "", "steps": 3, "num_references": 6, "reference_seed": 0})
    get = lambda wd: pso_references.offline_references(settings, wd, DEN, PARAMS, 3, (8, 8, 1))  # noqa: E731
    fresh = tmp_path / "fresh"
    got_images, got_labels, new = get(fresh)  # nothing given: the frozen student's samples, to be written
    assert new and not fresh.exists()
    np.testing.assert_allclose(got_images, images, atol=1e-6)
    settings.references = str(_write(tmp_path / "mine.npz", images=-images, labels=labels))
    got_images, _, new = get(fresh)  # a references file: its images, to be written
    assert new and np.array_equal(got_images, -images)
    fresh.mkdir()
    pso_references.write_references(fresh / pso_references.REFERENCES_FILE, images, labels)
    got_images, _, new = get(fresh)  # the work directory's own cache comes first, and stays
    assert not new and np.array_equal(got_images, images)
    assert [p.name for p in fresh.iterdir()] == [pso_references.REFERENCES_FILE]  # atomic: no temporary left
    lost = tmp_path / "lost"
    (lost / "checkpoints" / "4").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"reference cache .*lost/pso_references.npz is missing: this run's "
                                         "checkpoints were tuned against it"):
        get(lost)
    settings.references = str(tmp_path / "absent.npz")
    with pytest.raises(ValueError, match="absent.npz: no such references file"):
        get(tmp_path / "other")


def test_default_beta_per_loss_and_the_students_sampler():
    assert [pso.resolve_beta(None, loss, mode) for loss, mode in (
        ("hinge", "offline"), ("dpo", "offline"), ("hinge", "online"), ("diffusion", "offline"))] == [5, 200, 50, 5]
    assert pso.resolve_beta(7.0, "dpo", "offline") == 7.0
    from ml_collections import ConfigDict

    sampler = lambda **s: pso.student_sampler(ConfigDict({"steps": 4, "online_eta": 1.0, **s}))  # noqa: E731
    assert sampler(mode="online", online_kernel="renoise") == {"solver": "consistency", "steps": 4}
    assert sampler(mode="online", online_kernel="ddim") == {"solver": "ddim", "steps": 4, "eta": 1.0}
    assert sampler(mode="offline", online_kernel="renoise") == {"solver": "ddim", "steps": 4}


def test_the_configs_defaults_and_variants():
    from configs import digits_pso
    from distill import registry

    c = digits_pso.get_config()
    d = c.distill
    assert (d.pair_times, d.pair_weighting, d.beta, d.prior_weight, d.lam, d.online_kernel, d.online_transitions) == (
        "reference", "eps", None, 0.5, 0.1, "renoise", "all")
    assert (c.train.lora_rank, c.train.batch_size, c.train.num_steps, c.data.max_per_class) == (0, 64, 400, None)
    for variant in ("lora", "lora_few"):
        v = digits_pso.get_config(variant)
        assert (v.train.lora_rank, v.train.lr, v.train.num_steps, v.train.batch_size, v.train.weight_decay,
                v.train.grad_clip, v.distill.loss, v.distill.num_references) == (16, 2e-4, 600, 4, 1e-4, 1.0, "hinge",
                                                                                  200)
        assert v.data.max_per_class == (5 if variant == "lora_few" else None)
    v = digits_pso.get_config("online_lora")
    assert (v.distill.mode, v.train.lora_rank, v.train.lr, v.train.weight_decay, v.train.batch_size) == (
        "online", 16, 1e-5, 1e-6, 4)
    v = digits_pso.get_config("x0_grid").distill
    assert (v.pair_times, v.pair_weighting) == ("grid", "x0")
    v = digits_pso.get_config("online_old").distill
    assert (v.online_kernel, v.online_transitions) == ("ddim", "one")
    online = digits_pso.get_config("online")
    assert registry.get("pso").student(online) == {"solver": "consistency", "steps": 4}


def test_an_old_pso_config_keeps_the_loss_it_trained_with():
    from configs.common import upgrade_config

    old = {"data": {"name": "digits_thick"}, "model": {}, "train": {},
           "distill": {"method": "pso", "teacher_workdir": "w", "steps": 4, "loss": "dpo", "mode": "offline",
                       "beta": 5.0, "lam": 0.1, "num_references": 200, "reference_seed": 0, "reward": "thick",
                       "clip": 0.1, "online_eta": 1.0, "weighting": "v", "teacher_step": 1500}}
    new = upgrade_config(old)
    assert new["data"]["max_per_class"] is None
    assert {k: new["distill"][k] for k in ("pair_times", "pair_weighting", "prior_weight", "online_kernel",
                                           "online_transitions", "beta")} == {
        "pair_times": "grid", "pair_weighting": "x0", "prior_weight": 0.0, "online_kernel": "ddim",
        "online_transitions": "one", "beta": 5.0}
    old["distill"]["loss"] = "hinge"
    assert upgrade_config(old)["distill"]["prior_weight"] == 0.5
    current = upgrade_config({**old, "distill": {**old["distill"], "pair_times": "reference"}})["distill"]
    assert (current["pair_times"], current["pair_weighting"], current["prior_weight"]) == ("reference", "eps", 0.5)


def test_few_images_per_class_are_the_first_of_each_class():
    from configs import digits_pso
    from diffusion.data.digits import load_digits
    from orchestration.build.builders import build_source

    c = digits_pso.get_config("lora_few")
    source, info = build_source(c)
    images, labels = load_digits("train", thick=True)
    assert len(source) == info.size == 50 and np.bincount(source.labels).tolist() == [5] * 10
    keep = np.concatenate([np.flatnonzero(labels == k)[:5] for k in range(10)])
    np.testing.assert_array_equal(source.images, images[np.sort(keep)])
    assert len(build_source(c, "heldout")[0]) == 360  # evaluation sets stay whole
    from orchestration.build.builders import first_per_class

    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="max_per_class must be an integer >= 1"):
            first_per_class(source, bad)
    c.data.name, c.data.resolution, c.data.max_per_class = "synthetic", 8, 5
    with pytest.raises(ValueError, match="in-memory labelled dataset"):
        build_source(c)


def test_a_rank_16_adapter_fits_the_digits_unets_attention():
    """The reference's rank 16 (DB:1277-1284) on the digits UNet's 64-wide 4x4 attention."""
    from diffusion.nn.unet import UNet
    from diffusion.train import lora

    net = UNet(channels=32, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_heads=4, num_classes=10,
               out_channels=1)
    params = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)),
                                             jnp.zeros((1,), jnp.int32))["params"])
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params)
    tree = lora.init(params, 16, jax.random.PRNGKey(1))
    assert tree["adapters"] and all(ab["a"].shape[1] == 16 for ab in tree["adapters"].values())


def test_the_results_page_samples_online_runs_with_their_kernel():
    import types

    from configs import digits_pso
    from configs.common import base_config
    from sampling.spec import make_spec
    from scripts import pso_results

    run = lambda config: types.SimpleNamespace(config=config)  # noqa: E731
    assert pso_results.run_sampler(run(digits_pso.get_config("online")), "kernel") == make_spec("consistency", 4)
    assert pso_results.run_sampler(run(digits_pso.get_config("online_old")), "kernel") == make_spec("ddim", 4, eta=1.0)
    assert pso_results.run_sampler(run(digits_pso.get_config("online")), "ddim") == make_spec("ddim", 4)
    assert pso_results.run_sampler(run(digits_pso.get_config("")), "kernel") == make_spec("ddim", 4)
    assert pso_results.run_sampler(run(base_config()), "kernel") == make_spec("ddim", 4)  # the progressive start
    kernel_rows = {r[0] for r in pso_results.RUNS if r[4] == "kernel"}
    assert kernel_rows == {"pso_online", "pso_online_old", "pso_online_lora"}
    assert {"pso_online_eta0"} <= set(pso_results.PSO_KEYS)
