"""Checkpoint files are written without torch's per-record CRC32: our manifest's sha256 is the integrity check."""

from __future__ import annotations

import zipfile

import torch
from torch.utils.serialization import config

from orchestrator.runtime.checkpoint_writer import zip_crc_skipped


def _crcs(path) -> list[int]:
    with zipfile.ZipFile(path) as archive:
        return [info.CRC for info in archive.infolist() if info.filename.endswith("/data/0")]


def test_saves_inside_skip_the_crc_and_still_load(tmp_path):
    tensor = torch.arange(1000, dtype=torch.float32)
    torch.save({"w": tensor}, tmp_path / "with.pt")
    with zip_crc_skipped():
        torch.save({"w": tensor}, tmp_path / "without.pt")
    assert _crcs(tmp_path / "with.pt") != [0]
    assert _crcs(tmp_path / "without.pt") == [0]
    assert torch.equal(torch.load(tmp_path / "without.pt")["w"], tensor)


def test_the_setting_is_restored_even_when_the_save_fails():
    assert config.save.compute_crc32 is True
    try:
        with zip_crc_skipped():
            raise OSError("disk full")
    except OSError:
        pass
    assert config.save.compute_crc32 is True
