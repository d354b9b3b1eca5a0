"""fp16 / bf16 weight files (issue 27, item 5): diffusers' ``variant`` layout, read without
loss into float32 (bf16 through its raw bit pattern: numpy has no bfloat16), the files and
dtypes said; a folder of one variant imports without a flag, of two asks which."""

import json
import shutil

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from diffusion.convert.tensors import ConversionError, load_state_dict, weight_files  # noqa: E402


def test_bf16_tensors_read_exactly(tmp_path):
    torch.manual_seed(0)
    tensors = {"a": torch.randn(3, 5).to(torch.bfloat16), "b": torch.randn(7).to(torch.float16),
               "c": torch.randn(2, 2)}
    safetensors_torch.save_file(tensors, str(tmp_path / "model.safetensors"))
    got = load_state_dict(tmp_path / "model.safetensors")
    for k, v in tensors.items():
        np.testing.assert_array_equal(np.asarray(got[k], np.float32), v.float().numpy())


def test_a_damaged_bf16_header_is_named(tmp_path):
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file({"a": torch.ones(4, dtype=torch.bfloat16)}, str(path))
    raw = bytearray(path.read_bytes())
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    header["a"]["data_offsets"] = [0, 64]  # past the end of the file
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + bytes(raw[8 + int.from_bytes(raw[:8], "little"):]))
    with pytest.raises(ConversionError, match="do not fit its shape"):
        load_state_dict(path)
    path.write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(ConversionError, match="not a safetensors file"):
        load_state_dict(path)


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """The tiny pipeline's weights rounded to fp16 / bf16, saved as float32 files (``plain_*``) and as
    the variant's own files only (``only_*``)."""
    from tests.launch.test_import_weights import tiny_pipeline

    root = tmp_path_factory.mktemp("variants")
    pipe = tiny_pipeline(root / "pipe")
    out = {}
    for variant, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        pipe.to(dtype)
        pipe.save_pretrained(root / f"only_{variant}", safe_serialization=True, variant=variant)
        pipe.to(torch.float32)  # the rounded weights, in float32
        pipe.save_pretrained(root / f"plain_{variant}", safe_serialization=True)
        out[variant] = (root / f"plain_{variant}", root / f"only_{variant}")
    return out


@pytest.mark.parametrize("variant", ["fp16", "bf16"])
def test_a_variant_folder_imports_to_the_same_params(pipelines, variant, tmp_path):
    from orchestration.weights.importer import convert_pipeline, describe_weights, import_pipeline

    plain, only = pipelines[variant]
    assert not (only / "unet" / "diffusion_pytorch_model.safetensors").exists()
    a, b = convert_pipeline(plain), convert_pipeline(only)
    params = lambda c, part: c[part][1] if isinstance(c[part], tuple) else c[part]  # noqa: E731
    for part in ("unet", "text_encoder", "vae"):
        for x, y in zip(jax.tree_util.tree_leaves(params(a, part)), jax.tree_util.tree_leaves(params(b, part))):
            assert np.asarray(y).dtype == np.float32
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    record = import_pipeline(only, tmp_path / "run", dtype="bfloat16")
    line = describe_weights(record)
    assert f"unet/diffusion_pytorch_model.{variant}.safetensors ({'F16' if variant == 'fp16' else 'BF16'})" in line
    assert "stored as float32, computed in bfloat16" in line
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["dtype"] == "bfloat16"


def test_choosing_between_variants(pipelines, tmp_path):
    plain, only = pipelines["fp16"]
    both = tmp_path / "both"
    shutil.copytree(plain / "unet", both)
    for f in (only / "unet").glob("*.fp16.*"):
        shutil.copy(f, both / f.name)
    assert weight_files(both) == [both / "diffusion_pytorch_model.safetensors"]  # the plain files first
    assert weight_files(both, "fp16") == [both / "diffusion_pytorch_model.fp16.safetensors"]
    with pytest.raises(ConversionError, match="no bf16 weights in .*it holds fp16 weights"):
        weight_files(both, "bf16")
    (both / "diffusion_pytorch_model.safetensors").unlink()
    shutil.copy(pipelines["bf16"][1] / "unet" / "diffusion_pytorch_model.bf16.safetensors", both)
    with pytest.raises(ConversionError, match="it holds fp16 and bf16 weights: choose one with --variant"):
        weight_files(both)
    with pytest.raises(ConversionError, match="unknown weights variant 'int8'"):
        weight_files(both, "int8")
    from orchestration.weights.importer import convert_pipeline

    with pytest.raises(ConversionError, match="--dtype 'float16' is not a compute dtype here"):
        convert_pipeline(plain, dtype="float16")
