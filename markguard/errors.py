"""Errors markguard expects and reports as one line: what went wrong, in which file, and the fix."""


class MarkguardError(Exception):
    """An expected failure (bad input, wrong pairing) shown to the user without a traceback."""


class DecodeError(MarkguardError):
    """An image that cannot be decoded; ``reason`` is the short text for the error row."""

    def __init__(self, reason: str, source: str | None = None):
        self.reason = reason
        self.source = source
        super().__init__(f"{source}: {reason}" if source else reason)
