"""What counts as text worth sending: a message that would show as a blank announcement (only
spaces, or only zero-width, invisible and direction characters) is refused as empty on every
sending path."""

from __future__ import annotations

import unicodedata

__all__ = ["is_blank"]

# Unicode's Default_Ignorable_Code_Point ranges (DerivedCoreProperties.txt): drawn as nothing
# when not supported, whatever their category (U+115F and U+3164 are letters, U+2065 and the
# U+E0000 block mostly unassigned); plus the blank Braille pattern U+2800.
_IGNORABLE = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x2800, 0x2800),
    (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)  # fmt: skip
# Unicode categories that draw nothing on their own: controls (Cc), format characters (Cf: zero-
# width spaces and joiners, the word joiner, U+FEFF, bidi marks and isolates, tag characters) and
# separators (Zs spaces, Zl, Zp).
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})


def _invisible(char: str) -> bool:
    code = ord(char)
    if any(first <= code <= last for first, last in _IGNORABLE):
        return True
    return unicodedata.category(char) in _INVISIBLE_CATEGORIES


def is_blank(text: str) -> bool:
    """True when nothing of `text` would be seen: it is empty, or every character is a space,
    a control, or a zero-width or invisible character."""
    return all(_invisible(char) for char in text)
