"""Errors markguard expects and reports as one line: what went wrong, in which file, and the fix."""


class MarkguardError(Exception):
    """An expected failure (bad input, wrong pairing) shown to the user without a traceback."""


class DecodeError(MarkguardError):
    """An image that cannot be decoded; ``reason`` is the short text for the error row."""

    def __init__(self, reason: str, source: str | None = None):
        self.reason = reason
        self.source = source
        super().__init__(f"{source}: {reason}" if source else reason)


def check_out_folder(path, option: str = "-o") -> None:
    """Refuse, in one line, an output folder that cannot be made: under a file, or where the system allows no folder
    (``/proc``, a read-only mount). Probes with a temporary folder beside it, so a refusal leaves nothing behind."""
    import os
    import tempfile
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        return
    if p.exists():
        raise MarkguardError(f"{option} {path}: is a file, not a folder; give a folder path")
    parent = next((q for q in p.absolute().parents if q.exists()), None)
    if parent is not None and not parent.is_dir():
        raise MarkguardError(f"{option} {path}: {parent} is a file, so no folder can be made under it; give a folder path")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".markguard-probe-", dir=parent))
    except OSError as e:
        raise MarkguardError(f"{option} {path}: cannot make a folder in {parent} ({e.strerror}); give a folder you can write") from None


def check_ray_address(address: str | None, timeout: float = 3.0) -> None:
    """One line, in seconds, when nothing listens at a Ray ``--address`` host:port (Ray itself retries for minutes)."""
    import socket

    if not address or address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise MarkguardError(f"--address {address}: give HOST:PORT of a Ray cluster's head (ray start --head prints it), "
                             "or leave --address out for a local instance")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise MarkguardError(f"--address {address}: no Ray cluster answers there ({e.strerror or e}); start one with "
                             "`ray start --head` or leave --address out for a local instance") from None
