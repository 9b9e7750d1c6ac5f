"""dynamic_atss/files.py: the one file checksum of checkpoints and downloads."""

from __future__ import annotations

import hashlib

from dynamic_atss.files import sha256_file


def test_sha256_file_equals_hashlib_over_the_whole_file_across_blocks(tmp_path):
    data = bytes(range(256)) * ((3 << 20) // 256 + 7)  # a bit over 3 MiB: several 1 MiB blocks and a tail
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    assert sha256_file(str(path)) == sha256_file(path)
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
