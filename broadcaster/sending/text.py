"""What counts as text worth sending: a message that would show as a blank announcement (only
spaces, or only zero-width, invisible and direction characters) is refused as empty on every
sending path."""

from __future__ import annotations

import unicodedata

__all__ = ["is_blank"]

# Characters that draw nothing but are not in the categories below: Hangul fillers, the blank
# Braille pattern, the combining grapheme joiner, variation selectors, Mongolian free variation
# selectors.
_INVISIBLE = frozenset(
    "\u115f\u1160\u3164\uffa0\u2800\u034f\u180b\u180c\u180d\u180f" + "".join(map(chr, range(0xFE00, 0xFE10)))
)
# Unicode categories that draw nothing on their own: controls (Cc), format characters (Cf: zero-
# width spaces and joiners, the word joiner, U+FEFF, bidi marks and isolates, tag characters) and
# separators (Zs spaces, Zl, Zp).
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})


def _invisible(char: str) -> bool:
    if char in _INVISIBLE or 0xE0100 <= ord(char) <= 0xE01EF:  # variation selectors supplement
        return True
    return unicodedata.category(char) in _INVISIBLE_CATEGORIES


def is_blank(text: str) -> bool:
    """True when nothing of `text` would be seen: it is empty, or every character is a space,
    a control, or a zero-width or invisible character."""
    return all(_invisible(char) for char in text)
