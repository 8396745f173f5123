"""Schedules: values at their landmarks, composition, and that they are printable values."""

import itertools
import math
import pickle

import pytest

import fluxpy as fp


def test_one_cycle_starts_at_max_over_div():
    assert fp.one_cycle(100, 1.0)(0) == pytest.approx(1.0 / 25)


def test_one_cycle_peaks_at_max_at_pct_start():
    schedule = fp.one_cycle(100, 0.5, pct_start=0.3)
    assert schedule(30) == pytest.approx(0.5)
    assert max(schedule(s) for s in range(100)) == pytest.approx(0.5)


def test_one_cycle_ends_at_max_over_final_div():
    schedule = fp.one_cycle(100, 1.0)
    assert schedule(100) == pytest.approx(1e-5)
    assert schedule(99) < 1e-3


def test_one_cycle_rises_then_falls_monotonically():
    values = [fp.one_cycle(40, 1.0)(s) for s in range(41)]
    assert all(a < b for a, b in itertools.pairwise(values[:11]))
    assert all(a > b for a, b in itertools.pairwise(values[10:]))


def test_one_cycle_rejects_pct_start_outside_zero_one():
    with pytest.raises(ValueError, match="pct_start is the share"):
        fp.one_cycle(10, 1.0, pct_start=1.5)


def test_cosine_goes_from_start_to_end_through_the_midpoint():
    schedule = fp.cosine(10, 1.0, 0.0)
    assert [schedule(0), schedule(5), schedule(10)] == pytest.approx([1.0, 0.5, 0.0])


def test_linear_interpolates_and_holds_after_the_end():
    schedule = fp.linear(4, 0.0, 2.0)
    assert [schedule(s) for s in range(7)] == pytest.approx([0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0])


def test_warmup_rises_linearly_from_zero_then_runs_the_schedule_from_its_start():
    schedule = fp.warmup(4, fp.linear(10, 1.0, 0.0))
    assert [schedule(s) for s in range(6)] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0, 0.9])


def test_warmup_of_per_group_values_scales_each():
    schedule = fp.warmup(2, lambda step: [1.0, 4.0])
    assert schedule(1) == pytest.approx([0.5, 2.0])


def test_concat_runs_each_segment_from_its_own_step_zero():
    schedule = fp.concat((2, fp.linear(2, 0.0, 1.0)), (3, fp.linear(3, 3.0, 0.0)))
    assert [schedule(s) for s in range(6)] == pytest.approx([0.0, 0.5, 3.0, 2.0, 1.0, 0.0])


def test_concat_rejects_a_segment_that_is_not_a_pair():
    with pytest.raises(TypeError, match="not an \\(n_steps, schedule\\) pair"):
        fp.concat(fp.linear(2, 0.0, 1.0))


def test_schedules_print_compare_and_pickle_as_values():
    schedule = fp.warmup(10, fp.cosine(90, 0.1, 0.0))
    assert repr(schedule) == ("Warmup(n_steps=10, schedule=Cosine(n_steps=90, start=0.1, "
                              "end=0.0))")
    assert pickle.loads(pickle.dumps(schedule)) == schedule


def test_schedule_with_zero_steps_is_an_error_naming_the_argument():
    with pytest.raises(ValueError, match=r"Linear\(n_steps=0\): n_steps must be an int >= 1"):
        fp.linear(0, 1.0, 0.0)


def test_values_are_plain_floats():
    assert all(isinstance(s(3), float) and math.isfinite(s(3))
               for s in (fp.one_cycle(10, 1.0), fp.cosine(10, 1.0, 0.0),
                         fp.linear(10, 1.0, 0.0)))
