"""Text from SDKs and tools (multi-line messages, tracebacks, stderr) as the one line a message holds."""

from __future__ import annotations


def one_line(text: object) -> str:
    """str(text) with every run of whitespace, line breaks included, as one space."""
    return " ".join(str(text).split())
