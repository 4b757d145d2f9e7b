"""SQuAD-style exact match and token F1."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyft.tasks.metrics import exact_match, normalize, token_f1


def test_normalize_drops_case_punctuation_articles_and_extra_space():
    assert normalize("  The  Eiffel-Tower, in Paris! ") == "eiffeltower in paris"
    assert normalize("An apple a day") == "apple day"
    assert normalize("theatre") == "theatre"  # articles only as whole words


def test_exact_match():
    assert exact_match("the Paris.", ["Paris", "City of Light"]) == 1.0
    assert exact_match("Paris, France", "Paris") == 0.0
    assert exact_match("x", []) == 0.0


def test_token_f1():
    assert token_f1("Paris France", ["paris"]) == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert token_f1("the cat sat", ["a cat sat down", "dog"]) == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))
    assert token_f1("blue", "red") == 0.0
    assert token_f1("", [""]) == 1.0 and token_f1("the", ["cat"]) == 0.0  # empty after normalisation
    assert token_f1("x", []) == 0.0


@given(st.text(max_size=20), st.lists(st.text(max_size=20), max_size=3))
def test_bounds_and_em_implies_full_f1(pred, answers):
    em, f1 = exact_match(pred, answers), token_f1(pred, answers)
    assert em in (0.0, 1.0) and 0.0 <= f1 <= 1.0
    if em == 1.0:
        assert f1 == 1.0
