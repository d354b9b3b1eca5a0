"""Reading foreign weights: safetensors files and sharded indexes, a torch .bin only with
weights_only=True, and clear errors for a missing or damaged file."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from diffusion.convert.tensors import ConversionError, StateDict, load_state_dict

TENSORS = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "b.bias": np.ones(3, np.float16)}


def test_a_folder_file_or_sharded_index_reads_the_same(tmp_path):
    save_file(TENSORS, str(tmp_path / "model.safetensors"))
    for source in (tmp_path, tmp_path / "model.safetensors"):
        got = load_state_dict(source)
        assert set(got) == set(TENSORS) and all(np.array_equal(got[k], TENSORS[k]) for k in TENSORS)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    save_file({"a.weight": TENSORS["a.weight"]}, str(sharded / "part-1.safetensors"))
    save_file({"b.bias": TENSORS["b.bias"]}, str(sharded / "part-2.safetensors"))
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a.weight": "part-1.safetensors", "b.bias": "part-2.safetensors"}}))
    assert set(load_state_dict(sharded)) == set(TENSORS)


def test_a_torch_bin_is_read_with_weights_only(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({k: torch.tensor(v) for k, v in TENSORS.items()}, tmp_path / "pytorch_model.bin")
    got = load_state_dict(tmp_path)
    assert np.array_equal(got["a.weight"], TENSORS["a.weight"])

    class Evil:
        def __reduce__(self):
            return (print, ("arbitrary code ran",))

    torch.save({"x": Evil()}, tmp_path / "evil.bin")
    with pytest.raises(ConversionError, match="weights_only=True"):
        load_state_dict(tmp_path / "evil.bin")


def test_missing_and_damaged_files_are_named(tmp_path):
    with pytest.raises(ConversionError, match="does not exist"):
        load_state_dict(tmp_path / "nope")
    with pytest.raises(ConversionError, match="no weights in"):
        load_state_dict(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ConversionError, match="could not read .*model.safetensors"):
        load_state_dict(tmp_path)


def test_state_dict_hands_out_flax_layouts_and_refuses_leftovers():
    conv = np.random.default_rng(0).standard_normal((5, 3, 3, 3)).astype(np.float32)  # [out, in, kh, kw]
    sd = StateDict({"c.weight": conv, "c.bias": np.zeros(5), "l.weight": np.ones((4, 2)), "l.bias": np.zeros(4),
                    "left.over": np.zeros(1)}, "src")
    assert np.array_equal(sd.conv("c")["kernel"], conv.transpose(2, 3, 1, 0))
    assert sd.linear("l")["kernel"].shape == (2, 4)
    with pytest.raises(ConversionError, match=r"src: 1 tensor\(s\) this model has no place for: \['left.over'\]"):
        sd.finish()
    with pytest.raises(ConversionError, match="missing tensor 'l.w'"):
        sd.take("l.w")
