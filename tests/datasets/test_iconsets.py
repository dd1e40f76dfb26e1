"""Icon sets from npm archives become one-class-a-design galleries."""

from __future__ import annotations

import io
import tarfile

import pytest

from markguard.datasets.iconsets import import_iconset
from markguard.errors import MarkguardError

SVG = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 36 36"><circle cx="18" cy="18" r="{r}" fill="#{c}"/></svg>'


def _tgz(path, files: dict[str, str]):
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_twemoji_archive(tmp_path):
    archive = _tgz(tmp_path / "t.tgz", {
        "package/1f600.svg": SVG.format(r=16, c="ffcc00"),
        "package/1f44d-1f3fb.svg": SVG.format(r=10, c="ffcc00"),  # a skin-tone variant: the same design
        "package/2764.svg": SVG.format(r=12, c="dd2e44"),
        "package/empty.svg": "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 4 4'/>",  # not a hex name: ignored
        "package/../../evil.svg": SVG.format(r=5, c="000000"),  # outside the pattern: never written
    })
    out = tmp_path / "g"
    result = import_iconset("twemoji", out, archive=archive, size=32)
    assert sorted(p.parent.name for p in result.written) == ["emoji-1f600", "emoji-2764"]
    assert (out / "emoji-2764" / "2764.png").is_file()
    assert not (tmp_path / "evil.svg").exists()


def test_bad_inputs(tmp_path):
    with pytest.raises(MarkguardError, match="unknown icon set"):
        import_iconset("nosuch", tmp_path / "g", archive=tmp_path / "x.tgz")
    with pytest.raises(MarkguardError, match="archive not found"):
        import_iconset("flags", tmp_path / "g", archive=tmp_path / "missing.tgz")
    (tmp_path / "bad.tgz").write_bytes(b"not gzip")
    with pytest.raises(MarkguardError, match="not a readable"):
        import_iconset("flags", tmp_path / "g", archive=tmp_path / "bad.tgz")
