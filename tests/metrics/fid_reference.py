"""pytorch-fid 0.3.0's FID Inception with random weights, run in its own process for
tests/metrics/test_fid_inception.py:

    python -m tests.metrics.fid_reference DIR

reads ``DIR/images.npz`` (arrays ``[N, H, W, 3]`` in [0, 1]) and ``DIR/features.npz`` (two
feature sets ``a``, ``b``), writes ``DIR/pt_inception-2015-12-05-6726825d.pth`` (the random
network's state dict, as pytorch-fid's file holds it) and ``DIR/reference.npz`` (each image
array's pool3 features, and ``fid``: pytorch-fid's ``calculate_frechet_distance`` of ``a``, ``b``).

pytorch-fid needs torchvision, and the package index's torchvision 0.28.0 is the CUDA build:
installed beside the CPU torch wheel it cannot be imported (its C ops do not load, and
registering their fake kernels then fails), and an installed torchvision that cannot be imported
breaks transformers' CLIP import. So both live in ``.venv/fid_reference`` (``pip install
--no-deps --target``, the README's test command), which only this process puts on its path, and
torchvision is imported with the registrations of its missing C ops skipped: pytorch-fid uses
only its Python modules.
"""

import pathlib
import sys

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
TARGET = ROOT / ".venv" / "fid_reference"
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"


def import_torchvision():
    sys.path.insert(0, str(TARGET))
    original = torch.library.register_fake

    def register_existing(op, *args, **kwargs):
        try:
            torch._C._dispatch_has_kernel_for_dispatch_key(op, "Meta")
        except RuntimeError:  # an op of the C extension that did not load
            return lambda fn: fn
        return original(op, *args, **kwargs)

    torch.library.register_fake = register_existing
    try:
        import torchvision
    finally:
        torch.library.register_fake = original
    return torchvision


def randomize(net, seed: int = 0) -> None:
    """He-normal convs (activations keep their scale through ~90 layers), random BN affine and
    running statistics (variances in [0.5, 1.5], so a BN mistake shows)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)
            elif isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.8 + 0.4 * torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.rand(c, generator=g) - 0.1)
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            elif isinstance(m, torch.nn.Linear):
                m.weight.copy_(0.01 * torch.randn(m.weight.shape, generator=g))


def main(out: pathlib.Path) -> None:
    torchvision = import_torchvision()
    from pytorch_fid import inception as pfi
    from pytorch_fid.fid_score import calculate_frechet_distance

    inner = []  # the Inception3 that fid_inception_v3() builds, its download patched out
    pfi.load_state_dict_from_url = lambda *a, **k: {}
    torchvision.models.Inception3.load_state_dict = lambda self, state_dict, strict=True: inner.append(self)
    model = pfi.InceptionV3([pfi.InceptionV3.DEFAULT_BLOCK_INDEX], resize_input=True, normalize_input=True,
                            use_fid_inception=True).eval()
    (net,) = inner
    randomize(net)
    torch.save(net.state_dict(), out / WEIGHTS_FILE)  # fc (1008 classes) and BN counters included
    result = {}
    with np.load(out / "images.npz") as images, torch.no_grad():
        for name in images.files:
            (features,) = model(torch.from_numpy(images[name].transpose(0, 3, 1, 2).copy()))
            result[name] = features[:, :, 0, 0].double().numpy()
    with np.load(out / "features.npz") as f:
        a, b = f["a"], f["b"]
    result["fid"] = np.float64(calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0),
                                                          np.cov(b, rowvar=False)))
    np.savez(out / "reference.npz", **result)


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
