"""The registered ``plan`` part (``--plan sync|i2v|interp|long:N|pyramid:L``, ``--given_time``,
``--given_update``): built from a spec, sampled through ``generate`` with per-batch given
frames, the long-video window loop against the closed-form conditional, the per-frame time
shift, attention reuse on the video UNet, its errors, and the evaluation records of plans
from before issue 26 keeping their meaning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from diffusion.analytic import SharedLatentVideoDenoiser, make_mixture
from diffusion.contract import Stateless
from diffusion.schedules import make_schedule
from orchestration.generation.generate import generate
from orchestration.generation.video import generate_video
from sampling import loop
from sampling.registry import ModelCaps
from sampling.spec import make_spec
from sampling.transforms.plan import FramePlan

SCHED = make_schedule("cosine", 1000)
ORACLE = SharedLatentVideoDenoiser(1.0, 0.5, SCHED)
F = 4
SHAPE = (F, 2, 2, 1)
CAPS = ModelCaps(frames=F)


def test_the_plan_part_builds_a_frame_plan_that_generate_feeds_per_batch():
    """Defaults are the reference's (given frames at ``1/T``, DDIM-updated, network times
    floored at ``1/T``): the exact oracle moves the given frame a little; under
    ``given_update=clamp`` it comes out exactly, in both batches (the padded one too)."""
    spec = make_spec("ddim", 8, plan="i2v")
    _, solver, grid = spec.build(ORACLE, CAPS)
    assert isinstance(solver, FramePlan) and np.asarray(solver.given).tolist() == [True, False, False, False]
    assert (float(solver.given_time), solver.t_min, solver.update) == (float(np.float32(1e-3)), 1e-3, "ddim")
    assert grid.shape == (9,)
    truth = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (6, *SHAPE)))
    mask = np.zeros((6, F), bool)
    mask[:, 0] = True
    out = generate(ORACLE, None, SHAPE, 6, spec, CAPS, batch_size=4, given=(mask, truth))
    assert 0 < np.abs(out[:, 0] - truth[:, 0]).max() < 0.05
    assert np.abs(out[:, 1:] - truth[:, 1:]).min() > 0
    clamp = make_spec("ddim", 8, plan="i2v", given_update="clamp")
    out = generate(ORACLE, None, SHAPE, 6, clamp, CAPS, batch_size=4, given=(mask, truth))
    np.testing.assert_array_equal(out[:, 0], truth[:, 0])
    old = make_spec("ddim", 8, plan="i2v", given_time="zero", given_update="clamp").build(ORACLE, CAPS)[1]
    assert (float(old.given_time), old.t_min, old.update) == (0.0, 0.0, "clamp")


def test_pyramid_loop_is_longer_and_max_lag_sizes_it():
    assert make_spec("ddim", 8, plan="pyramid:2").build(ORACLE, CAPS)[2].shape == (8 + 2 * (F - 1) + 1,)
    assert make_spec("ddim", 8, plan="pyramid:1", plan_max_lag=3).build(ORACLE, CAPS)[2].shape == (8 + 3 * 3 + 1,)
    # the time shift wraps the base solver: the pyramid checks the solver under it
    make_spec("ddim", 8, plan="pyramid:1", time_shift="20,300").build(ORACLE, CAPS)


def test_changing_the_given_frames_or_the_lag_does_not_recompile():
    x = jnp.zeros((2, *SHAPE))
    runs = []
    for given, lag in [("0", 1), ("0,3", 2), ("1", 0)]:
        spec = make_spec("ddim", 6, plan="pyramid:" + str(max(lag, 1)), plan_max_lag=2, given_frames=given)
        den, solver, grid = spec.build(ORACLE, CAPS)
        solver = solver.replace(lag=jnp.asarray(lag, jnp.int32), x_given=x + 0.5,
                                given=jnp.broadcast_to(solver.given, (2, F)))
        runs.append(np.asarray(loop.sample(den, None, solver, grid, jax.random.normal(jax.random.PRNGKey(0), x.shape))))
        if len(runs) == 1:
            size = loop._chain_jit._cache_size()
    assert loop._chain_jit._cache_size() == size
    assert np.abs(runs[0] - runs[1]).max() > 1e-3


@pytest.mark.parametrize("values, caps, match", [
    ({"plan": "i2v"}, ModelCaps(), "this model makes images"),
    ({"plan": "i2v", "given_frames": "4"}, CAPS, "frame 4 is outside the model's 4-frame video"),
    ({"plan": "interp", "given_frames": "0,1,2,3"}, CAPS, "nothing is left to generate"),
    ({"plan": "interp", "given_frames": "0"}, CAPS, r"gives one frame: give two or more \(e.g. 0,3\), or use --plan i2v"),
    ({"plan": "long:4"}, CAPS, "no longer than the model's 4-frame window"),
    ({"plan": "pyramid:1", "solver": "dpmpp2m"}, CAPS, "needs a one-step solver"),
    ({"plan": "i2v", "solver": "dpmpp2m"}, CAPS, "--given_update ddim .* needs a one-step solver"),
    ({"plan": "long:8", "solver": "dpmpp2m"}, CAPS, "use --given_update clamp"),
    ({"plan": "i2v", "given_update": "hold"}, CAPS, "expected one of ddim, clamp"),
    ({"plan": "i2v", "given_time": "0"}, CAPS, "expected one of first, zero"),
])
def test_bad_plans_are_named(values, caps, match):
    values = {"steps": 8, **values}
    with pytest.raises(ValueError, match=match):
        make_spec(**values).build(ORACLE, caps)


def test_a_multistep_solver_runs_a_plan_under_the_clamp():
    for plan in ("i2v", "long:8", "sync"):
        make_spec("dpmpp2m", 8, plan=plan, given_update="clamp").build(ORACLE, CAPS)
    make_spec("dpmpp2m", 8, plan="sync").build(ORACLE, CAPS)  # no given frames: the update never runs


@pytest.mark.parametrize("text, match", [("long", "long needs a number"), ("long:0", "out of range"),
                                         ("i2v:3", "takes no value"), ("video", "unknown plan")])
def test_bad_plan_specs_are_named(text, match):
    with pytest.raises(ValueError, match=match):
        make_spec("ddim", 8, plan=text)
    with pytest.raises(ValueError, match="frame indices"):
        make_spec("ddim", 8, plan="i2v", given_frames="-1")


def test_long_video_windows_continue_the_previous_frames_by_the_closed_form():
    """Window 2 of a long video gives its first 2 frames (window 1's last two): in the shared-
    latent Gaussian its new frames regress on their mean with gain ``2 a^2 / (2 a^2 + b^2)``
    and residual variance ``a^2 b^2 / (2 a^2 + b^2) + b^2``. The first window is the plain
    synchronous sample of the same seed."""
    n = 3000
    spec = make_spec("ddim", 200, plan="long:6")
    video = generate_video(ORACLE, None, SHAPE, n, spec, CAPS, seed=3, batch_size=n)
    assert video.shape == (n, 6, 2, 2, 1)
    sync = generate(ORACLE, None, SHAPE, n, make_spec("ddim", 200, plan="sync"), CAPS, seed=3, batch_size=n)
    np.testing.assert_array_equal(video[:, :F], sync)
    given = video[:, 2:4].mean(axis=1).reshape(-1)  # window 2's given frames
    a2, b2 = 1.0, 0.25
    gain, variance = 2 * a2 / (2 * a2 + b2), a2 * b2 / (2 * a2 + b2) + b2
    for frame in (4, 5):
        new = video[:, frame].reshape(-1)
        slope = (given * new).mean() / (given**2).mean()
        np.testing.assert_allclose(slope, gain, atol=0.03)
        np.testing.assert_allclose((new - slope * given).var(), variance, rtol=0.08)


@struct.dataclass
class FramesAsImages(Stateless):
    """A video denoiser whose frames are independent images of ``image`` (a per-image oracle)."""

    image: object

    @property
    def schedule(self):
        return self.image.schedule

    def __call__(self, params, x_t, t, cond=None, **_):
        b, f = x_t.shape[:2]
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32).reshape(jnp.shape(t) + (1,) * (2 - jnp.ndim(t))), (b, f))
        pred, _ = self.image(params, x_t.reshape(b * f, *x_t.shape[2:]), t.reshape(-1))
        return jax.tree.map(lambda v: v.reshape(x_t.shape), pred), {}


@pytest.mark.parametrize("mode", ["query", "destination"])
def test_the_time_shift_acts_per_frame(mode):
    """On a video of independent frames, the per-frame time shift under a plan equals the
    image time shift on the frames as separate images, frame by frame."""
    mixture = make_mixture(SCHED, [[-1.0] * 4, [1.0] * 4], [0.3, 0.6])
    video = FramesAsImages(mixture)
    x_T = jax.random.normal(jax.random.PRNGKey(1), (3, *SHAPE))
    spec = make_spec("ddim", 10, plan="sync", time_shift="80,300", time_shift_mode=mode)
    den, solver, grid = spec.build(video, CAPS)
    out = np.asarray(loop.sample(den, None, solver, grid, x_T))
    image_spec = make_spec("ddim", 10, time_shift="80,300", time_shift_mode=mode)
    den_i, solver_i, grid_i = image_spec.build(mixture, ModelCaps())
    ref = np.asarray(loop.sample(den_i, None, solver_i, grid_i, x_T.reshape(3 * F, 2, 2, 1))).reshape(out.shape)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    den_0, solver_0, grid_0 = make_spec("ddim", 10, plan="sync").build(video, CAPS)
    unshifted = np.asarray(loop.sample(den_0, None, solver_0, grid_0, x_T))
    assert np.abs(out - unshifted).max() > 1e-3  # the shift did something


def test_a_plan_composes_with_guidance_attention_reuse_and_the_time_shift_on_the_video_unet():
    """i2v on a class-conditional video UNet (per-frame adaLN-Zero temporal blocks) under
    guidance, HURRY-style reuse of spatial and temporal maps and the per-frame time shift:
    one jitted run; reuse changes the result (maps were reused) and so does guidance; the
    three samplers differ only in traced knobs: one compile per given-frame update. Under
    the clamp the given frame comes out exactly; under the reference's DDIM update (issue
    26) it is the random network's re-estimate."""
    from diffusion.nn.denoiser import Denoiser
    from diffusion.nn.unet import UNet
    from tests.nn.test_unet import TINY, _randomize_zero_layers

    module = UNet(**TINY, temporal=True, num_classes=10)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 8, 8, 1))
    p = module.init(jax.random.PRNGKey(0), x, jnp.zeros((2, 3)), label=jnp.zeros((2,), jnp.int32))["params"]
    p = _randomize_zero_layers(p, jax.random.PRNGKey(4))
    den = Denoiser(module, SCHED, "x0")  # bounded predictions: the differences below are not rounding
    caps = ModelCaps(null_label=10, self_attention=True, frames=3)
    truth = np.asarray(jax.random.uniform(jax.random.PRNGKey(2), x.shape, minval=-1, maxval=1))
    mask = np.array([[True, False, False]] * 2)
    labels = np.array([3, 7])
    outs = {}
    size = None
    for update in ("clamp", "ddim"):
        for name, values in {"all": dict(guidance=2, attention_reuse="hurry:3", time_shift="80,300"),
                             "no_reuse": dict(guidance=2, attention_reuse="hurry:0", time_shift="80,300"),
                             "w1": dict(guidance=1, attention_reuse="hurry:3", time_shift="80,300")}.items():
            spec = make_spec("ddim", 6, plan="i2v", given_update=update, **values)
            outs[update, name] = generate(den, p, x.shape[1:], 2, spec, caps, labels=labels, given=(mask, truth))
            if update == "clamp":
                np.testing.assert_array_equal(outs[update, name][:, 0], truth[:, 0])
            assert np.isfinite(outs[update, name]).all()
            size = size if name != "all" else loop._chain_jit._cache_size()
        assert loop._chain_jit._cache_size() == size  # the update is static: one compile per update
        assert np.abs(outs[update, "all"] - outs[update, "no_reuse"]).max() > 0.05
        assert np.abs(outs[update, "all"] - outs[update, "w1"]).max() > 0.05
    # the reference's update: the given frame is the network's own re-estimate, not the truth
    assert np.abs(outs["ddim", "all"][:, 0] - truth[:, 0]).max() > 0.05


def test_a_plan_that_gives_frames_needs_them():
    with pytest.raises(ValueError, match="plan gives frames"):
        generate(ORACLE, None, SHAPE, 2, make_spec("ddim", 4, plan="i2v"), CAPS)
    with pytest.raises(ValueError, match="need a video plan"):
        generate(ORACLE, None, SHAPE, 2, make_spec("ddim", 4), CAPS, given=(np.zeros((2, F), bool), np.zeros((2, *SHAPE))))


def test_the_replacement_baseline_holds_the_frame_but_misses_the_conditional():
    """The replacement trick (given frames noised to the grid time, every frame at one time)
    ends on the given frame exactly, but on the shared-latent Gaussian its other frames'
    regression on the given one falls short of the closed-form gain that per-frame
    conditioning (the i2v plan, given frame at 1/T and DDIM-updated) reaches."""
    n = 3000
    truth = np.asarray(jax.random.normal(jax.random.PRNGKey(7), (n, *SHAPE)))
    mask = np.zeros((n, F), bool)
    mask[:, 0] = True
    gain, _ = ORACLE.given_one_frame()
    slopes = {}
    for plan in ("i2v", "replace"):
        out = generate(ORACLE, None, SHAPE, n, make_spec("ddim", 100, plan=plan), CAPS, batch_size=n,
                       given=(mask, truth))
        if plan == "replace":
            np.testing.assert_array_equal(out[:, 0], truth[:, 0])
        else:  # the reference's update re-estimates the given frame: close, not exact
            assert np.abs(out[:, 0] - truth[:, 0]).max() < 0.05
        g, rest = truth[:, 0].reshape(-1), out[:, 1].reshape(-1)
        slopes[plan] = (g * rest).mean() / (g * g).mean()
    np.testing.assert_allclose(slopes["i2v"], gain, atol=0.03)
    assert slopes["replace"] < gain - 0.1, slopes


def test_plan_tags_name_the_given_frame_handling_and_old_records_keep_their_meaning(tmp_path):
    """Tags: the reference's defaults add nothing, ``given_time=zero`` adds ``-gt0`` and
    ``given_update=clamp`` ``-clamp``. An evaluation record of tag version 3 (before issue 26)
    whose plan gave frames or lagged them ran Kairos's old plan: it loads renamed to
    ``given_time=zero;given_update=clamp``, never taken for a cell of the new defaults; plain
    ``sync`` and the ``replace`` baseline did not change and keep their ids."""
    import json

    from orchestration.workdir.records import load_records, record_fields
    from sampling.spec import TAG_VERSION, SamplerSpec

    assert make_spec("ddim", 25, plan="i2v").tag() == "ddim_25steps_plan-i2v"
    legacy = make_spec("ddim", 25, plan="i2v", given_time="zero", given_update="clamp")
    assert legacy.tag() == "ddim_25steps_plan-i2v-gt0-clamp"
    assert SamplerSpec.parse(legacy.to_string()) == legacy
    assert make_spec("ddim", 50, "adm", plan="pyramid:2", given_update="clamp").tag() == \
        "ddim_50steps_adm_plan-pyramid2-clamp"
    old = {"i2v": make_spec("ddim", 25, plan="i2v"), "pyramid": make_spec("ddim", 25, plan="pyramid:2"),
           "sync": make_spec("ddim", 25, plan="sync"), "replace": make_spec("ddim", 25, plan="replace"),
           "sync_shift": make_spec("ddim", 25, plan="sync", time_shift="80,300")}
    records = [{"id": f"ckpt1200/{s.tag()}/seed0/n100", "ckpt": 1200, "seed": 0, "num": 100, "psnr": 20.0 + i,
                **record_fields(s)} for i, s in enumerate(old.values())]
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"tag_version": 3, "records": records}))
    said = []
    got = dict(zip(old, load_records(path, log=said.append)))
    assert TAG_VERSION == 4 and said == [f"{path}: converted 5 record(s) of tag version 3 to version 4"]
    assert got["i2v"]["id"] == "ckpt1200/ddim_25steps_plan-i2v-gt0-clamp/seed0/n100"
    assert got["i2v"]["sampler"] == legacy.to_string() and got["i2v"]["psnr"] == 20.0
    assert got["pyramid"]["id"] == "ckpt1200/ddim_25steps_plan-pyramid2-gt0-clamp/seed0/n100"
    assert got["sync_shift"]["id"].endswith("plan-sync-gt0-clamp_ts80-300/seed0/n100")
    for name in ("sync", "replace"):
        assert got[name] == records[list(old).index(name)]
