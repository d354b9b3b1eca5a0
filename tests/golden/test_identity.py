"""The sampling-registry renovation (issue 10) changed no number: sampler outputs, losses,
gradients and train steps equal the record taken before it (tests/golden/cases.py).

On the machine that recorded them every case is bitwise equal (``python -m
tests.golden.cases``); here a representative subset is compared to float32 rounding, so
the test also holds on CPUs whose XLA kernels round differently.
"""

import numpy as np
import pytest

from tests.golden import cases

SUBSET = [*(f"mixture/{s}/ts_query" for s in ("ddim", "ddpm", "spndm", "fpndm", "dpmpp2m", "dpmpp3m", "consistency")),
          "mixture/ddim/ts_dest", "mixture/ddim/eta0.5", "mixture/ddim/grid_logsnr",
          "unet/ddim/everything", "unet/generate", "unet/w_student", "unet/consistency", "guided", "train"]


@pytest.mark.parametrize("name", SUBSET)
def test_equal_to_the_pre_renovation_record(name):
    record = np.load(cases.OUT)
    for key, value in cases.compute(name).items():
        want = record[key]
        np.testing.assert_allclose(np.asarray(value, np.float64), want, rtol=1e-5,
                                   atol=1e-6 * max(1.0, float(np.abs(want).max())), err_msg=key)


def test_the_cases_cover_the_record():
    record = set(np.load(cases.OUT).files)
    covered = set()
    for name in cases.ALL:
        covered |= {name} if name in record else {"train/params", "train/ema"} if name == "train" else {
            f"loss/{name}", f"grad/{name}"}
    assert covered == record and set(SUBSET) <= set(cases.ALL)
