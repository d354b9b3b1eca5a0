"""FSDP on an SD-1.5-sized UNet, with abstract shapes only (``jax.eval_shape``: nothing is
allocated): the per-device bytes of params + optimizer state fall as 1 / fsdp over the 8
fake devices, and a state larger than the device is refused with the estimate."""

import jax
import numpy as np
import jax.numpy as jnp
import pytest

from benchmarks.sd_unet_speed import CONTEXT_LEN, SD15_UNET
from diffusion.nn.sd_unet import SDUNet, SDUNetConfig
from diffusion.train.memory import check_fits, shard_bytes, state_memory
from diffusion.train.optim import make_optimizer
from diffusion.train.sharding import make_mesh, state_shardings
from diffusion.train.state import create_train_state


def make_sd15_state():
    net = SDUNet(SDUNetConfig.from_dict(SD15_UNET))
    x, ctx = jnp.zeros((1, 64, 64, 4)), jnp.zeros((1, CONTEXT_LEN, SD15_UNET["cross_attention_dim"]))
    params = net.init(jax.random.PRNGKey(0), x, jnp.zeros((1,)), context=ctx)["params"]
    return create_train_state(params, make_optimizer(1e-4, 0, 100), jax.random.PRNGKey(1))


def test_fsdp_splits_an_sd15_unets_params_and_optimizer_state():
    shapes, per_device = jax.eval_shape(make_sd15_state), {}
    for fsdp in (1, 2, 4, 8):  # the rules of diffusion.train.setup.abstract_state, on each mesh
        shardings = state_shardings(shapes, make_mesh(8 // fsdp, fsdp, jax.devices()))
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)
        per_device[fsdp] = state_memory(abstract)
    count = sum(x.size for x in jax.tree.leaves(abstract.params))
    assert count == 859_520_964  # diffusers' SD-1.5 UNet2DConditionModel
    whole = per_device[1]
    assert whole.params == 4 * count and whole.optimizer == pytest.approx(2 * whole.params, rel=1e-3)  # Adam's mu, nu
    for fsdp, m in per_device.items():
        share = (m.params + m.optimizer) / (whole.params + whole.optimizer)
        assert share == pytest.approx(1 / fsdp, rel=0.03), (fsdp, share)  # small leaves stay replicated
    assert shard_bytes(abstract) == per_device[8].total
    with pytest.raises(ValueError, match=r"cannot fit the devices: train state per device: params 411\.4 MiB.* of "
                                         r"1\.00 GiB on the device.*--config\.mesh\.fsdp"):
        check_fits(per_device[8], 2**30)
    check_fits(per_device[8], 2**34)  # fits: no error


def test_activations_are_what_the_backward_pass_keeps():
    from diffusion.train.memory import activation_bytes

    w, x = jax.ShapeDtypeStruct((5, 7), jnp.float32), jax.ShapeDtypeStruct((3, 5), jnp.float32)
    # sin's derivative: cos(x @ w) [3, 7] is kept; the arguments are not counted
    assert activation_bytes(lambda w, x: jnp.sum(jnp.sin(x @ w)), w, x) == 3 * 7 * 4
    # two layers: sin and cos of the first [3, 7], w.T [7, 5] and cos of the second [3, 5]
    two = lambda w, x: jnp.sin(jnp.sin(x @ w) @ w.T)  # noqa: E731
    assert activation_bytes(lambda w, x: jnp.sum(two(w, x)), w, x) == (2 * 3 * 7 + 7 * 5 + 3 * 5) * 4
    recomputed = jax.checkpoint(two, policy=jax.checkpoint_policies.nothing_saveable)
    assert activation_bytes(lambda w, x: jnp.sum(recomputed(w, x)), w, x) == 0


def test_remat_keeps_the_params_and_gradients():
    """The same parameter tree and gradients with every block recomputed (to float32
    rounding: recomputation may fuse differently), on a one-level UNet with a residual and
    an attention block, dropout on."""
    from diffusion.nn.unet import UNet

    x, t, label = jax.random.uniform(jax.random.PRNGKey(1), (2, 8, 8, 1)), jnp.array([0.3, 0.8]), jnp.array([1, 7])
    grads, trees = {}, {}
    for policy in ("off", "nothing_saveable"):
        net = UNet(channels=8, channel_mult=(1,), num_res_blocks=1, attn_resolutions=(8,), num_heads=2, dropout=0.1,
                   num_classes=10, remat=policy)
        params = net.init(jax.random.PRNGKey(0), x, t, label=label)["params"]
        trees[policy] = jax.tree.structure(params)
        params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(3), p.shape), params)  # conv_out
        # starts at zero, which would zero every gradient
        loss = lambda p: jnp.mean(net.apply({"params": p}, x, t, label=label, train=True,  # noqa: E731
                                            rngs={"dropout": jax.random.PRNGKey(2)}) ** 2)
        grads[policy] = jax.jit(jax.grad(loss))(params)
    assert trees["off"] == trees["nothing_saveable"]
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads["off"]))
    assert scale > 1e-3
    for a, b in zip(jax.tree.leaves(grads["off"]), jax.tree.leaves(grads["nothing_saveable"])):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6 * scale)  # float32 rounding


@pytest.mark.parametrize("name", ["digits", "scenes"])
def test_every_remat_policy_keeps_less(name):
    import copy
    import importlib

    from diffusion.nn.remat import POLICIES
    from orchestration.build.builders import build_source
    from orchestration.experiments.memory import activation_estimate

    config = importlib.import_module(f"configs.{name}").get_config("smoke")  # the ADM UNet; the SD UNet
    _, info = build_source(config)
    kept = activation_estimate(copy.deepcopy(config), info, 4, POLICIES)
    assert kept["nothing_saveable"] < kept["dots_with_no_batch_dims_saveable"] <= kept["dots_saveable"] < kept["off"]
    assert kept["off"] > 4 * kept["nothing_saveable"]


def test_a_run_whose_activations_cannot_fit_is_refused_before_any_write(tmp_path, monkeypatch):
    import copy

    from configs import digits
    from orchestration.experiments import runner
    from orchestration.experiments.training import train
    from orchestration.build.builders import build_source
    from orchestration.experiments.memory import activation_estimate

    class Fits(Exception):
        pass

    config = digits.get_config("smoke")
    config.train.batch_size = 512  # activations well above the smoke model's state
    _, info = build_source(config)
    kept = activation_estimate(copy.deepcopy(config), info, config.train.batch_size // 8, ["off", "nothing_saveable"])
    monkeypatch.setattr(runner, "device_capacity", lambda: kept["off"])  # the state + kept["off"] cannot fit
    with pytest.raises(ValueError, match=r"cannot fit the devices: .*activations at the configured batch .* \(remat "
                                         r"off; remat nothing_saveable: .*MiB\).*--config\.model\.remat=nothing_saveable"):
        train(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    config.model.remat = "nothing_saveable"  # with remat it fits: the run gets past its checks to the work directory
    monkeypatch.setattr(runner, "check_workdir", lambda *a: (_ for _ in ()).throw(Fits()))
    with pytest.raises(Fits):
        train(config, tmp_path / "run", progress=False)


def test_the_memory_command_prints_every_policy():
    import subprocess
    import sys

    from tests.conftest import ROOT

    done = subprocess.run([sys.executable, "-m", "launch.memory", "--config", "configs/digits.py",
                           "--config.mesh.fsdp=2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "8 devices (mesh data=4 x fsdp=2), batch 64 (8 per device)"
    assert lines[1].startswith("train state per device: params ")
    policies = [line.split()[1] for line in lines[2:]]
    assert policies == ["off", "nothing_saveable", "dots_with_no_batch_dims_saveable", "dots_saveable"]
    bad = subprocess.run([sys.executable, "-m", "launch.memory", "--config", "configs/digits.py",
                          "--config.model.remat=everything"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[0].startswith(
        "error: config.model.remat is 'everything'; expected one of off, nothing_saveable"), bad.stderr


@pytest.mark.parametrize("overrides, match", [
    ({"train.batch_size": 0}, "config.train.batch_size must be an integer >= 1, got 0"),
    ({"train.batch_size": -8}, "config.train.batch_size must be an integer >= 1, got -8"),
    ({"train.batch_size": 12}, "batch_size=12 does not split over the 8 devices of the mesh; use a multiple of 8"),
    ({"mesh.data": 3}, "mesh data=3 x fsdp=1 does not use the 8 available devices"),
    ({"model.remat": "nan"}, "config.model.remat is .nan.; expected one of off, nothing_saveable"),
    ({"model.kind": "vae"}, "estimates diffusion models; this config trains a VAE"),
])
def test_the_memory_estimate_checks_its_config_first(overrides, match):
    from configs import digits
    from orchestration.experiments.memory import estimate

    config = digits.get_config()
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    with pytest.raises(ValueError, match=match):
        estimate(config)
