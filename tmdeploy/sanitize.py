"""Text from files made safe for a terminal.

Names, metadata values and producer strings in a checkpoint or ONNX file are untrusted: an ESC or C1
control character in them would be a terminal escape sequence (clear the screen, forge a hyperlink,
retitle the window), and a bidirectional override would show text in another order than it is. Every
such character is shown as a visible escape instead, so the user sees what the file really holds.
"""

from __future__ import annotations

import unicodedata

# Format characters that reorder or hide text (bidirectional overrides and isolates, zero-width marks).
_INVISIBLE = {"\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u2028", "\u2029", "\ufeff",
              *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))}


def clean(text, *, newlines: bool = False) -> str:
    """``text`` with control and reordering characters escaped (``\\x1b``, ``\\u202e``).

    ``newlines=True`` keeps line breaks, for multi-line reports; everything else is escaped.
    """
    text = str(text)
    if text.isprintable() and not _INVISIBLE.intersection(text):  # the common case, fast
        return text
    return "".join(ch if _safe(ch, newlines) else _escape(ch) for ch in text)


def _safe(ch: str, newlines: bool) -> bool:
    if ch == "\n":
        return newlines
    return ch not in _INVISIBLE and unicodedata.category(ch) not in ("Cc", "Zl", "Zp")


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
