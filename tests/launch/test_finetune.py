"""Fine-tuning an imported run (issue 28, items 1-3): ``configs/sd_finetune.py`` with
``init_from`` on an image folder. The run starts from the import's params (full: within
Adam's few steps of them; LoRA: the base bitwise), resumes exactly with the import gone,
exports as a diffusers folder that imports back to its params, and its LoRA goes out as a
file diffusers fuses into the run's UNet. Bad settings are one-line errors that write
nothing."""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from tests.data.test_imagefolder import write_folder
from tests.launch.test_import_weights import diffusers, tiny_pipeline  # noqa: F401 (skips without diffusers)

from configs.sd_finetune import get_config  # noqa: E402
from orchestration.build.run_loader import load_run  # noqa: E402
from orchestration.experiments.training import train  # noqa: E402
from orchestration.experiments import encodings  # noqa: E402
from orchestration.weights.importer import import_pipeline  # noqa: E402

ONE = dict(progress=False, devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    tiny_pipeline(root / "pipe")
    import_pipeline(root / "pipe", root / "base")
    write_folder(root / "images")
    return root


def finetune(root, variant="", cache=False, **train_fields):
    c = get_config(variant)
    c.init_from, c.data.name = str(root / "base"), f"imagefolder:{root / 'images'}"
    c.diffusion.cond_drop_prob = 0.5  # caption dropouts in a 4-step run
    c.data.cache_encodings = cache
    c.train.update({"num_steps": 4, "ckpt_every": 2, "batch_size": 2, "log_every": 2, "keep_last": 3, **train_fields})
    return c


@pytest.fixture(scope="module")
def full(root):
    """A full fine-tune of 4 steps (checkpoints at 2 and 4), on the encoders run per batch."""
    train(finetune(root), root / "full", **ONE)
    return root / "full"


def max_diff(a, b) -> float:
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(np.asarray(x) - np.asarray(y)).max()), a, b)))


def test_a_full_finetune_starts_from_the_import_resumes_without_it_and_exports(root, full):
    from orchestration.generation.export import export_diffusers

    base, run = load_run(root / "base"), load_run(root / "full")
    assert run.config.model.to_dict() == {**base.config.model.to_dict(), "dropout": 0.0}
    assert run.config.diffusion.weighting == base.config.model.pred_type == "eps"
    assert run.config.sample.sampler == base.config.sample.sampler and run.config.data.resolution == 16
    start, trained = base.params(0), run.trained_params(4)
    # four AdamW steps at lr 1e-5 move each weight by at most ~4e-5; a fresh init would be O(0.1) away
    assert 0 < max_diff(trained, start) < 1e-4
    assert json.loads((root / "full" / "init_from.json").read_text())["step"] == 0
    from orchestration.experiments.memory import estimate

    memory, _ = estimate(finetune(root), jax.devices()[:1])  # launch.memory sizes the base's model
    assert memory.params == sum(4 * np.size(x) for x in jax.tree.leaves(start))
    assert 0 <= memory.optimizer - 2 * memory.params < 64  # Adam's moments and counters

    # resumed from step 2 with the import moved away == uninterrupted
    shutil.copytree(root / "full", root / "resumed", ignore=shutil.ignore_patterns("4", ".lock"))
    (root / "base").rename(root / "away")
    try:
        train(finetune(root), root / "resumed", **ONE)
        resumed = load_run(root / "resumed")
        assert max_diff(resumed.trained_params(4), trained) == 0.0
        assert max_diff(resumed.params(4), run.params(4)) == 0.0
        export_diffusers(root / "resumed", root / "out")  # the export layout was copied in: no base needed
    finally:
        (root / "away").rename(root / "base")
    import_pipeline(root / "out", root / "reimported")
    assert max_diff(load_run(root / "reimported").params(0), run.params(4)) == 0.0


def test_a_lora_finetune_trains_adapters_on_the_import_and_diffusers_fuses_them(root, monkeypatch):
    """``:lora`` on a TFDS caption dataset -> ``launch.export_weights --lora_file``: diffusers' ``load_lora_weights`` +
    ``fuse_lora`` on the imported folder gives the run's merged UNet on every tensor (float32
    rounding), and our ``--lora`` reader adds the same update back."""
    from diffusion.convert.invert import invert
    from diffusion.convert.tensors import read_config
    from diffusion.convert.unet import convert_unet
    from diffusion.nn.sd_unet import SDUNetConfig
    from diffusion.train import lora
    from orchestration.generation.export_lora import export_lora
    from orchestration.workdir.diffusers_meta import read_layout

    import tensorflow_datasets as tfds

    config = finetune(root, "lora", num_steps=2, lr=1e-2)
    config.data.name = "tfds:ai2dcaption"  # a TFDS caption dataset (faked: coco_captions' builder needs TensorFlow)
    with tfds.testing.mock_data(num_examples=6):
        train(config, root / "lora", **ONE)
        run = load_run(root / "lora")  # a run reads its dataset's description
    base = load_run(root / "base")
    tree = run.trained_params(2)
    assert max_diff(tree["base"], base.params(0)) == 0.0  # LoRA leaves the import's weights alone
    merged = lora.merge(tree, 4.0)
    assert max_diff(run.params(2), merged) < 1e-6  # no EMA: the merged network
    assert max_diff(merged, base.params(0)) > 1e-3

    record = export_lora(run, root / "adapters" / "lora.safetensors", 2)
    assert record["rank"] == 4 and record["alpha"] == 4.0
    meta = root / "lora" / "diffusers"
    layout = read_layout(meta)["unet"]
    want = invert(lambda t: convert_unet(t, read_config(meta / "unet", SDUNetConfig, "unet"), "unet"), layout,
                  merged, "unet")
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(root / "pipe", safety_checker=None,
                                                             requires_safety_checker=False)
    pipe.load_lora_weights(root / "adapters", weight_name="lora.safetensors")
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    got = {k: v.numpy() for k, v in pipe.unet.state_dict().items()}
    assert sorted(got) == sorted(want)
    assert max(np.abs(got[k] - want[k]).max() for k in want) < 1e-6
    ours = base.with_loras([(str(root / "adapters" / "lora.safetensors"), 1.0)]).params(0)
    assert max_diff(ours, merged) < 1e-6

    # refusals before any write, and a write killed midway leaves the old file whole
    out = root / "adapters" / "lora.safetensors"
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="exists; pass --overwrite"):
        export_lora(run, out, 2)
    (root / "folder.safetensors").mkdir()
    with pytest.raises(FileExistsError, match="is a folder; name a file"):
        export_lora(run, root / "folder.safetensors", 2)
    import safetensors.numpy

    def killed(tensors, path, metadata=None):
        pathlib.Path(path).write_bytes(b"half")
        raise KeyboardInterrupt
    monkeypatch.setattr(safetensors.numpy, "save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        export_lora(run, out, 2, overwrite=True)
    assert out.read_bytes() == before and sorted(p.name for p in out.parent.iterdir()) == ["lora.safetensors"]


def test_bad_finetune_settings_are_one_line_errors_that_write_nothing(root, tmp_path):
    from tests.launch.test_sample_evaluate import assert_one_line_error, probe

    (tmp_path / "untrained").mkdir()
    shutil.copy(root / "base" / "config.json", tmp_path / "untrained" / "config.json")
    shutil.copytree(root / "base", tmp_path / "damaged")
    for f in (tmp_path / "damaged" / "checkpoints" / "0" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 1000:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # half of each array file
    cmd = ["--config", "configs/sd_finetune.py", "--workdir", str(tmp_path / "w"),
           f"--config.data.name=imagefolder:{root / 'images'}"]
    base = f"--config.init_from={root / 'base'}"
    cases = [
        ([*cmd], "config.init_from is '': name the work directory"),
        ([*cmd, f"--config.init_from={tmp_path / 'nowhere'}"], "has no config.json"),
        ([*cmd, f"--config.init_from={tmp_path / 'untrained'}"], "has no checkpoint yet"),
        ([*cmd, f"--config.init_from={tmp_path / 'untrained' / 'config.json'}"], "has no config.json"),
        ([*cmd, base, "--config.data.resolution=0"], "config.data.resolution=0, but the model of"),
        ([*cmd, base, "--config.sample.prompts=('',)", "--config.train.sample_every=2"],
         "config.sample.prompts must be a list of non-empty prompts"),
        (["--config", "configs/digits.py:smoke", "--workdir", str(tmp_path / "w"), "--config.data.cache_encodings=True"],
         "caches a latent text-to-image model's VAE latents and text states; this run has no text encoder"),
        ([*cmd, base, "--config.data.resolution=32"], "config.data.resolution=32, but the model of"),
        ([*cmd, base, "--config.train.sample_every=2"], "the sample grids need prompts"),
        ([*cmd, base, "--config.data.name=imagefolder:" + str(tmp_path / "untrained")], "has no metadata.jsonl"),
        ([*cmd, base, "--config.train.lora_rank=-1"], "lora_rank must be an integer >= 0"),
        ([*cmd, f"--config.init_from={tmp_path / 'damaged'}"], "its checkpoint at step 0 cannot be started from"),
    ]
    results = probe("launch.train", *[argv for argv, _ in cases])
    for result, (_, message) in zip(results, cases):
        assert_one_line_error(result, message)
    assert not (tmp_path / "w").exists()


def test_cached_encodings_train_as_the_encoders_do_and_resume_without_encoding_again(root, full, monkeypatch):
    """``data.cache_encodings`` (issue 28, item 3): the same flips, caption dropouts and posterior
    samples as the uncached full run, so the same params to float32 rounding of the encoders'
    batching; a start killed while encoding leaves no cache (a hard kill's temporary folder is
    removed by the next start); a resumed run does not encode again; a cache of other data is
    refused before any write."""
    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(encodings, "_encode", killed)
    with pytest.raises(KeyboardInterrupt):
        train(finetune(root, cache=True, num_steps=2), root / "cached", **ONE)
    assert not (root / "cached" / "encodings").exists() and not list((root / "cached").glob(".encodings-*"))
    monkeypatch.undo()
    (root / "cached" / ".encodings-killed").mkdir()  # what a SIGKILL while encoding leaves
    train(finetune(root, cache=True, num_steps=2), root / "cached", **ONE)
    assert not list((root / "cached").glob(".encodings-*"))
    manifest = json.loads((root / "cached" / "encodings" / "manifest.json").read_text())
    assert manifest["rows"] == 6 and manifest["captions"] == 6 and manifest["random_flip"]
    arrays = {p.stem: np.load(p) for p in (root / "cached" / "encodings").glob("*.npy")}
    assert arrays["mean"].shape == arrays["mean_flip"].shape == (6, 8, 8, 4)  # the tiny VAE halves 16 px
    assert arrays["contexts"].shape == (6, 16, 32) and arrays["null_context"].shape == (16, 32)
    assert np.abs(arrays["mean"] - arrays["mean_flip"]).max() > 1e-3  # the flipped image's own encodings

    def no_encoding(*args, **kwargs):
        raise AssertionError("the data was encoded again")
    monkeypatch.setattr(encodings, "_encode", no_encoding)
    train(finetune(root, cache=True), root / "cached", **ONE)
    monkeypatch.undo()
    full, cached = load_run(root / "full"), load_run(root / "cached")
    moved = max_diff(full.trained_params(4), load_run(root / "base").params(0))
    # a float32 ulp at 1.0 (a norm scale) is 1.2e-7; another dropout or flip would move weights by ~moved
    assert moved > 1e-5 and max_diff(cached.trained_params(4), full.trained_params(4)) < 1e-2 * moved

    # a cache of other data is refused before any write, naming what changed
    changed = root / "changed"
    shutil.copytree(root / "cached", changed, ignore=shutil.ignore_patterns(".lock"))
    before = sorted(p.relative_to(changed) for p in changed.rglob("*"))
    metadata = root / "images" / "metadata.jsonl"
    text = metadata.read_text()
    metadata.write_text(text.replace("picture 0", "picture zero"))
    try:
        with pytest.raises(ValueError, match=r"were made from other data or encoders \(data: cached"):
            train(finetune(root, cache=True, num_steps=6), changed, **ONE)
    finally:
        metadata.write_text(text)
    assert sorted(p.relative_to(changed) for p in changed.rglob("*")) == before
    contexts = changed / "encodings" / "contexts.npy"
    contexts.write_bytes(contexts.read_bytes()[:-100])  # truncated
    with pytest.raises(ValueError, match="contexts.npy is .* bytes but the manifest records .*: the cache is damaged"):
        train(finetune(root, cache=True, num_steps=6), changed, **ONE)
    (changed / "encodings" / "manifest.json").write_text("{")
    with pytest.raises(ValueError, match="manifest.json is damaged or missing"):
        train(finetune(root, cache=True, num_steps=6), changed, **ONE)


def test_a_start_killed_while_recording_its_base_leaves_no_half_copy(root, tmp_path, monkeypatch):
    """The base's export layout is copied under a temporary name: a kill midway leaves no
    ``diffusers/`` (a hard kill's temporary folder is removed by the next start), and
    ``init_from.json``, written last, is only there once the copy is whole."""
    from orchestration.experiments import init_from

    config = finetune(root)
    hook = init_from.record_base(config, init_from.base_run(config))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(init_from.shutil, "copytree", killed)
    with pytest.raises(KeyboardInterrupt):
        hook(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.undo()
    (tmp_path / ".diffusers-killed").mkdir()  # what a SIGKILL midway leaves
    hook(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diffusers", "init_from.json"]
    assert sorted(p.name for p in (tmp_path / "diffusers").iterdir()) == sorted(
        p.name for p in (root / "base" / "diffusers").iterdir())
