"""Caller-supplied text made safe for logs and error details: escaped and truncated.

A workflow name, a step id, a node id or an exception message may come from a remote
caller. Before it reaches a log line or a status detail it goes through :func:`clip`, so
no caller can forge log lines (a newline), drive a terminal (escape sequences) or fill a disk
or a metadata frame with one field.
"""

from __future__ import annotations

__all__ = ["MAX_LOGGED_CHARS", "clip", "clip_message"]

MAX_LOGGED_CHARS = 200
"""How much of one caller-supplied field a log line or an error detail carries."""

_ESCAPES = {i: f"\\x{i:02x}" for i in (*range(0x20), 0x7F)}
_ESCAPES.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})
_ESCAPES.update({i: f"\\u{i:04x}" for i in range(0x80, 0xA0)})  # C1 controls (CSI, ...)
_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029"})
_MESSAGE_ESCAPES = {k: v for k, v in _ESCAPES.items() if k not in (ord("\n"), ord("\t"))}


def clip(text: object, limit: int = MAX_LOGGED_CHARS) -> str:
    """``text`` with control characters escaped, cut to about ``limit`` characters.

    The cut is said: ``…(+N chars)`` follows a truncated value.
    """
    s = text if isinstance(text, str) else str(text)
    extra = len(s) - limit
    if extra > 0:
        s = s[:limit]
    s = s.translate(_ESCAPES)
    return f"{s}…(+{extra} chars)" if extra > 0 else s


def clip_message(text: str, limit: int) -> str:
    """A long message (an error's text) cut to ``limit`` characters, saying so.

    Unlike :func:`clip`, line breaks are kept (a traceback is multi-line); other control
    characters are escaped.
    """
    extra = len(text) - limit
    if extra > 0:
        text = text[:limit]
    text = text.translate(_MESSAGE_ESCAPES)
    return f"{text}… [truncated: {extra} more characters]" if extra > 0 else text
