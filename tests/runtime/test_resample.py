"""Stream resampling: source snippets → head columns at a fixed rate, the causal form of ``sample_indices``."""

from __future__ import annotations

import numpy as np
import pytest

from ecm_edge.config import load_config
from ecm_edge.data.dataset import sample_indices
from ecm_edge.data.rate import parse_columns_per_snippet, training_rate
from ecm_edge.errors import ConfigError
from ecm_edge.runtime.online import OnlineParams
from ecm_edge.runtime.resample import ColumnResampler, columns_per_snippet

SNIPPET = 0.64


def plan_all(rate: float, num_snippets: int, chunk: int, start: float = 0.0):
    """The resampler's columns for ``num_snippets`` contiguous snippets pushed ``chunk`` at a time, with the
    column's snippet as a stream index."""
    resampler = ColumnResampler(rate)
    snippets, starts, ends, arrivals = [], [], [], []
    for first in range(0, num_snippets, chunk):
        count = min(chunk, num_snippets - first)
        s = start + SNIPPET * np.arange(first, first + count)
        plan = resampler.plan(list(s), list(s + SNIPPET))
        snippets += list(plan.snippet + first)
        starts += plan.starts
        ends += plan.ends
        arrivals += plan.arrivals
    return np.asarray(snippets), np.asarray(starts), np.asarray(ends), np.asarray(arrivals)


@pytest.mark.parametrize(("length", "t_fixed"), [(750, 750), (40, 100), (7, 21), (30, 100), (100, 40), (13, 5),
                                                 (224, 750), (1, 750), (2600, 750)])
def test_columns_read_the_offline_uniform_sampling_indices(length, t_fixed):
    """At ρ = t_fixed / T the stream's columns are exactly the snippets offline testing takes."""
    snippets, *_ = plan_all(t_fixed / length, length, chunk=1)
    np.testing.assert_array_equal(snippets, sample_indices(length, t_fixed))


@pytest.mark.parametrize("rate", [1.0, 3.35, 2.5, 0.4, 0.77])
def test_chunking_does_not_change_the_columns(rate):
    one = plan_all(rate, 97, chunk=1)
    for chunk in (5, 97):
        for a, b in zip(one, plan_all(rate, 97, chunk=chunk), strict=True):
            np.testing.assert_array_equal(a, b)


def test_native_rate_is_the_identity():
    snippets, starts, ends, arrivals = plan_all(1.0, 20, chunk=3, start=5.0)
    np.testing.assert_array_equal(snippets, np.arange(20))
    np.testing.assert_allclose(starts, 5.0 + SNIPPET * np.arange(20))
    np.testing.assert_allclose(ends, starts + SNIPPET)
    np.testing.assert_allclose(arrivals, ends)


@pytest.mark.parametrize("rate", [3.35, 2.0, 0.5])
def test_columns_tile_source_time_uniformly(rate):
    """Column i covers [i / ρ, (i + 1) / ρ) snippets of source time and arrives with the snippet it reads."""
    n = 50
    snippets, starts, ends, arrivals = plan_all(rate, n, chunk=4)
    i = np.arange(len(snippets))
    assert len(snippets) == int(np.ceil(n * rate))
    np.testing.assert_allclose(starts, i / rate * SNIPPET, atol=1e-9)
    np.testing.assert_allclose(ends, (i + 1) / rate * SNIPPET, atol=1e-9)
    np.testing.assert_allclose(arrivals, (snippets + 1) * SNIPPET)
    assert (starts >= snippets * SNIPPET - 1e-9).all() and (starts < arrivals).all()


def test_reset_starts_a_new_stream():
    resampler = ColumnResampler(2.5)
    first = resampler.plan([0.0, 0.64, 1.28], [0.64, 1.28, 1.92])
    resampler.reset()
    again = resampler.plan([10.0, 10.64, 11.28], [10.64, 11.28, 11.92])
    np.testing.assert_array_equal(first.snippet, again.snippet)
    np.testing.assert_allclose(np.asarray(again.starts) - 10.0, first.starts, atol=1e-9)


@pytest.mark.parametrize(("value", "expected"), [("auto", None), ("AUTO", None), ("3", 3.0), ("3.35", 3.35),
                                                 (0.5, 0.5)])
def test_parse_columns_per_snippet(value, expected):
    assert parse_columns_per_snippet(value) == expected


@pytest.mark.parametrize("value", ["fast", "0", "-2", "nan", "inf", ""])
def test_bad_columns_per_snippet_is_a_config_error(value):
    with pytest.raises(ConfigError, match=r"stream\.columns_per_snippet must be 'auto' or a positive number"):
        parse_columns_per_snippet(value)
    with pytest.raises(ConfigError, match=r"stream\.columns_per_snippet"):
        columns_per_snippet(load_config("small", [f"stream.columns_per_snippet={value or 'x y'}"]))


def test_unresolved_auto_streams_at_the_native_rate():
    assert columns_per_snippet(load_config("thumos14")) == 1.0
    assert columns_per_snippet(load_config("thumos14", ["stream.columns_per_snippet=2.5"])) == 2.5


def test_training_rate_is_the_median_clip_rate():
    assert training_rate([750, 250, 150, 75], 750) == pytest.approx(np.median([1, 3, 5, 10]))
    with pytest.raises(ConfigError):
        training_rate([], 750)


def test_horizon_and_warmup_keep_their_time_span():
    cfg = load_config("thumos14", ["stream.horizon=100", "stream.warmup=10"])
    native, resampled = OnlineParams.from_config(cfg), OnlineParams.from_config(cfg, 3.35)
    assert (native.horizon, native.warmup) == (100, 10)
    assert (resampled.horizon, resampled.warmup) == (335, 34)
