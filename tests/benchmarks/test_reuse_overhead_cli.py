"""benchmarks/reuse_overhead.py refuses bad sizes with one line, before building any model."""

import sys

import pytest

from benchmarks import reuse_overhead


@pytest.mark.parametrize("argv, match", [
    (["--steps", "3"], "--steps must be >= 4"),
    (["--steps", "0"], "--steps must be >= 4"),
    (["--batch", "0"], "--batch and --repeats >= 1"),
    (["--repeats", "-2"], "--batch and --repeats >= 1"),
    (["--steps", "nan"], "invalid int value: 'nan'"),
])
def test_bad_sizes_are_one_line(monkeypatch, capsys, argv, match):
    monkeypatch.setattr(sys, "argv", ["reuse_overhead", *argv])
    with pytest.raises(SystemExit) as e:
        reuse_overhead.main()
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert match in err[-1] and len([line for line in err if "error" in line]) == 1
