"""Components of a text-to-image work directory: stored and read back bit-exactly, a
changed, truncated or missing file named and refused, never overwritten."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion.nn.vae import AutoencoderKL, VAEConfig
from orchestration.workdir import components

CONFIG = VAEConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=2)


@pytest.fixture
def saved(tmp_path):
    params = AutoencoderKL(CONFIG).init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))["params"]
    components.save_params(tmp_path / "vae", "vae", CONFIG, params)
    return tmp_path / "vae", params


def test_round_trip_is_exact(saved):
    path, params = saved
    comp = components.load(path)
    assert comp.kind == "vae" and comp.config == CONFIG and hash(comp.config)
    flat = lambda tree: {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}  # noqa: E731
    ours, ref = flat(comp.params), flat(params)
    assert ours.keys() == ref.keys()
    for key in ref:
        np.testing.assert_array_equal(ours[key], ref[key])


def test_damage_is_named(saved):
    path, params = saved
    with pytest.raises(FileExistsError, match="never overwritten"):
        components.save_params(path, "vae", CONFIG, params)
    data = bytearray((path / "params.safetensors").read_bytes())
    data[-5] ^= 0x01  # one flipped bit in the last array
    (path / "params.safetensors").write_bytes(bytes(data))
    with pytest.raises(components.DamagedComponent, match="params.safetensors does not match the hash"):
        components.load(path)
    (path / "params.safetensors").unlink()
    with pytest.raises(components.DamagedComponent, match="params.safetensors is missing"):
        components.load(path)
    (path / "component.json").write_text("{not json")
    with pytest.raises(components.DamagedComponent, match="component.json is damaged"):
        components.load(path)
    manifest = path.parent / "other"
    manifest.mkdir()
    with pytest.raises(components.DamagedComponent, match="is not a component"):
        components.load(manifest)
    (manifest / "component.json").write_text(json.dumps({"kind": "unet", "files": {}}))
    with pytest.raises(components.DamagedComponent, match="unknown kind 'unet'"):
        components.load(manifest)


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.numpy

    with pytest.raises(ValueError, match="needs a"):
        components.save_params(tmp_path / "x", "clip_text", CONFIG, {})

    def disk_full(tensors, filename):
        open(filename, "wb").write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        components.save_params(tmp_path / "y", "vae", CONFIG, {"a": np.zeros(3)})
    assert list(tmp_path.iterdir()) == []  # neither the component nor its temporary folder


def test_a_copy_is_byte_identical_and_a_damaged_source_writes_nothing(saved, tmp_path):
    path, _ = saved
    components.copy(path, tmp_path / "student" / "vae")
    for name in ("component.json", "params.safetensors"):
        assert (tmp_path / "student" / "vae" / name).read_bytes() == (path / name).read_bytes()
    with pytest.raises(FileExistsError, match="never overwritten"):
        components.copy(path, tmp_path / "student" / "vae")
    data = bytearray((path / "params.safetensors").read_bytes())
    data[-5] ^= 0x01
    (path / "params.safetensors").write_bytes(bytes(data))
    with pytest.raises(components.DamagedComponent, match="params.safetensors does not match the hash"):
        components.copy(path, tmp_path / "other" / "vae")
    assert not (tmp_path / "other").exists()
