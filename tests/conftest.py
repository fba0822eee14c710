"""Shared test helpers: the devices present on this machine, and a quiet matplotlib."""

from __future__ import annotations

import pytest

from lesson_harness import available_devices

DEVICES = available_devices()  # parametrize over these; absent accelerators are simply not listed
ABSENT_ACCELERATORS = [name for name in ("cuda", "mps") if name not in DEVICES]


def assert_pngs_written(directory, names):
    for name in names:
        path = directory / name
        assert path.is_file(), f"{name} was not written"
        assert path.stat().st_size > 10_000, f"{name} is suspiciously small ({path.stat().st_size} bytes)"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{name} is not a PNG"


@pytest.fixture
def unwritable_dir(tmp_path):
    """A path that cannot become a directory even for root: a regular file sits in its way."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    return blocker / "plots"
