"""benchmarks/encodings_cache.py refuses bad sizes and an --out folder with one line, before
training anything."""

import pytest

from benchmarks import encodings_cache


@pytest.mark.parametrize("argv, match", [
    (["--steps", "0"], "--steps must be a multiple of 25, at least 50"),
    (["--steps", "-50"], "--steps must be a multiple of 25, at least 50"),
    (["--steps", "60"], "--steps must be a multiple of 25, at least 50"),
    (["--steps", "nan"], "invalid int value: 'nan'"),
    (["--segments", "0"], "--segments must be >= 1"),
    (["--out", "."], "is a folder; name the JSON file to write"),
])
def test_bad_arguments_are_one_line(capsys, argv, match):
    with pytest.raises(SystemExit) as e:
        encodings_cache.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert match in err[-1] and len([line for line in err if "error" in line]) == 1
