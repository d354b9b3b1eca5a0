"""Atomic result files (orchestration/workdir/files.py): a write that fails half-way leaves the old file
whole and no temporary file behind."""

import numpy as np
import pytest

from orchestration.workdir import files


def test_a_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "report.json"
    files.write_text(path, "old\n")
    files.write_text(path, "new\n")
    assert path.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_write_that_fails_half_way_keeps_the_old_file(tmp_path):
    path = tmp_path / "samples.npz"
    with files.replacing(path) as f:
        np.savez_compressed(f, images=np.arange(6, dtype=np.uint8))
    with pytest.raises(RuntimeError, match="killed"):
        with files.replacing(path) as f:
            f.write(b"PK half an archive")
            raise RuntimeError("killed while writing")
    np.testing.assert_array_equal(np.load(path)["images"], np.arange(6, dtype=np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["samples.npz"]


def test_a_missing_directory_is_the_os_error_and_leaves_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        files.write_text(tmp_path / "absent" / "x.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_cached_array_is_named(tmp_path):
    path = tmp_path / "ckpt10_n64.npy"
    np.save(path, np.ones((4, 8, 8, 1), np.float32))
    np.testing.assert_array_equal(files.load_npy(path), np.ones((4, 8, 8, 1), np.float32))
    path.write_bytes(path.read_bytes()[:100])  # truncated, as by a full disk
    with pytest.raises(ValueError, match=r"ckpt10_n64\.npy is not a readable \.npy file .*delete it"):
        files.load_npy(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"ckpt10_n64\.npy is not a readable"):
        files.load_npy(path)
