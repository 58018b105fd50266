"""Negative terms in a phrase: ``a red circle -snow`` or ``a dog -"on a leash"``.

The rule (rclip's): rank by the positive text's vector minus the mean of the negative
terms' unit vectors. For a unit image vector ``x`` the ranking score is then
``cos(x, positive) - mean_i cos(x, negative_i)`` (the query's length is the same for
every image), so an image that matches a negative term loses as much as it matches it.
On the tiny test model the top 10 of the 240 circles for "a red circle -snow" are 10 red
circles not on snow, against 7 (and 3 on snow) without the term (python -m bench.similarity).
"""

from __future__ import annotations

import re

# A term starts with "-" after a space (or at the start): "t-shirt" and "-" alone are words.
_NEGATIVE = re.compile(r'(?:^|(?<=\s))-(?:"([^"]*)"|([^\s"]+))')
MAX_NEGATIVES = 8  # one text encode each; more reads as a list, not a search


def split_negatives(phrase: str) -> tuple[str, tuple[str, ...]]:
    """``(positive text, negative terms)``; whitespace collapsed in both."""
    negatives = []
    for m in _NEGATIVE.finditer(phrase):
        term = " ".join((m.group(1) if m.group(1) is not None else m.group(2)).split())
        if term:
            negatives.append(term)
    positive = " ".join(_NEGATIVE.sub(" ", phrase).split())
    return positive, tuple(dict.fromkeys(negatives))
