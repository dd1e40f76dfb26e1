"""npm packages as markguard's icon importers take them: ``npm pack`` into a folder, or a local .tgz, unpacked safely."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from markguard.errors import MarkguardError
from markguard.fsio import real_under


def npm_pack(spec: str, dest: str | Path, *, fix: str, timeout: float = 300) -> Path:
    """Run ``npm pack spec`` in the folder ``dest``; returns the archive it wrote. ``fix`` ends each error: what to give instead."""
    npm = shutil.which("npm")
    if npm is None:
        raise MarkguardError(f"npm not found; install Node.js, or {fix}")
    try:
        done = subprocess.run([npm, "pack", spec], cwd=dest, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MarkguardError(f"npm pack {spec} took over {timeout:.0f}s; check the network or {fix}") from None
    archive = next(Path(dest).glob("*.tgz"), None)
    if done.returncode != 0 or archive is None:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise MarkguardError(f"npm pack {spec} failed ({last}); check the network or {fix}")
    return archive


def fetch_package(package: str, dest: str | Path, *, version: str | None = None, archive: str | Path | None = None,
                  fix: str = "pass the package's .tgz with --archive", timeout: float = 300) -> Path:
    """``package`` unpacked to ``dest/package``: from a local ``archive`` (.tgz, e.g. a cached ``npm pack``), else ``npm pack``."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if archive is None:
            archive = npm_pack(f"{package}@{version}" if version else package, tmp, fix=fix, timeout=timeout)
        archive = Path(archive)
        if not archive.is_file():
            raise MarkguardError(f"{archive}: not found; give the .tgz that `npm pack {package}` writes")
        try:
            with tarfile.open(archive) as tar:
                safe_extract(tar, dest)
        except tarfile.TarError as e:
            raise MarkguardError(f"{archive}: not a readable .tgz ({e})") from None
    if not (dest / "package").is_dir():
        raise MarkguardError(f"{archive.name}: has no package/ folder; not an npm package archive")
    return dest / "package"


def safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract only plain files and folders that stay under ``dest``."""
    if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
        # the "data" filter refuses absolute paths, links out and device files in the archive
        tar.extractall(dest, filter="data")
        return
    members, real_dest = [], os.path.realpath(dest)
    for m in tar.getmembers():
        if not (m.isfile() or m.isdir()) or real_under(real_dest, dest / m.name) in (None, real_dest):
            raise MarkguardError(f"{tar.name}: refused member {m.name!r} (link, device or path outside the archive)")
        members.append(m)
    tar.extractall(dest, members=members)
