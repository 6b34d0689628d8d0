"""The one atomic-write helper: whole files or none, temporaries removed on every exit path."""

import os
import stat

import pytest

from cosmos_lora.files import atomic_write, publishing


def test_atomic_write_publishes_whole_file_with_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "sub" / "a.json", '{"x": 1}')
    finally:
        os.umask(old)
    assert path.read_text() == '{"x": 1}'
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(os.listdir(path.parent)) == ["a.json"]


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit, OSError])
def test_publishing_removes_the_temporary_and_keeps_the_old_file(tmp_path, error):
    target = tmp_path / "video.mp4"
    target.write_bytes(b"old")
    with pytest.raises(error):
        with publishing(target) as tmp:
            tmp.write_bytes(b"half")
            raise error()
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["video.mp4"]
