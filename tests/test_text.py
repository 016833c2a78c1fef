"""broadcaster/sending/text.py: what counts as a blank message, over generated text."""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from broadcaster.sending.text import is_blank

INVISIBLE = st.sampled_from(
    " \t\n\r\u00a0\u1680\u2000\u2007\u200a\u200b\u200c\u200d\u200e\u200f\u2028\u2029"
    "\u202a\u202e\u2060\u2061\u2066\u2069\u3000\u3164\ufeff\u115f\u2800\ufe0f\U000e0041"
)


@given(st.text(INVISIBLE, max_size=50))
def test_text_of_only_spaces_and_invisible_characters_is_blank(text):
    assert is_blank(text)


@given(
    st.text(INVISIBLE, max_size=20),
    st.characters(categories=("L", "N", "P", "S")),
    st.text(INVISIBLE, max_size=20),
)
def test_one_letter_digit_mark_or_symbol_among_them_is_not(before, visible, after):
    if visible in "\u3164\u2800\u115f\u1160\uffa0":
        return  # the fillers drawn as nothing, though their category says otherwise
    assert unicodedata.category(visible)[0] in "LNPS"
    assert not is_blank(before + visible + after)
