"""fp.Every: one value for periodic work, checked when it is made."""

import re

import pytest

import fluxpy as fp


@pytest.mark.parametrize(("every", "text"), [
    (fp.Every(epochs=1), "every 1 epoch"),
    (fp.Every(steps=500), "every 500 steps"),
    (fp.Every(seconds=0.5), "every 0.5 seconds"),
])
def test_every_says_when(every, text):
    assert str(every) == text


def test_every_is_due_on_multiples_of_its_count():
    assert [n for n in range(1, 13) if fp.Every(steps=4).due(n)] == [4, 8, 12]
    assert not fp.Every(steps=4).due(0)
    assert fp.Every(seconds=10).due(10.0) and not fp.Every(seconds=10).due(9.99)


def test_every_is_a_frozen_comparable_value():
    assert fp.Every(steps=3) == fp.Every(steps=3) != fp.Every(epochs=3)
    assert fp.Every(steps=3).unit == "steps" and fp.Every(steps=3).amount == 3


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "fp.Every(nothing): give exactly one of epochs=, steps= or seconds="),
    ({"steps": 2, "epochs": 1}, "fp.Every(epochs=1, steps=2): give exactly one of"),
    ({"steps": 0}, "fp.Every(steps=0): steps must be a whole number >= 1"),
    ({"steps": -3}, "fp.Every(steps=-3): steps must be a whole number >= 1"),
    ({"epochs": 1.5}, "fp.Every(epochs=1.5): epochs must be a whole number >= 1"),
    ({"epochs": True}, "fp.Every(epochs=True): epochs must be a whole number >= 1"),
    ({"seconds": 0}, "fp.Every(seconds=0): seconds must be a number > 0"),
    ({"seconds": "60"}, "fp.Every(seconds='60'): seconds must be a number > 0"),
])
def test_a_bad_every_is_an_error_naming_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        fp.Every(**kwargs)
