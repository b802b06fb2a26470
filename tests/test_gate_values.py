"""The gate arithmetic, checked by hand and by property tests."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from truthprobe_eval import GateConfigError, gate_values, normalize

score_arrays = arrays(
    np.float64,
    st.tuples(st.integers(1, 6), st.integers(1, 6)),
    elements=st.floats(0.0, 1.0, allow_nan=False, width=64),
)


def test_hand_computed_gates():
    s = np.array([[0.5, 0.7, 0.9], [0.6, 0.6, 0.9]])
    np.testing.assert_allclose(gate_values(s, 2.0, "centered"), [[1 - 0.4, 1.0, 1 + 0.4], [1 - 0.2, 1 - 0.2, 1 + 0.4]])
    np.testing.assert_allclose(
        gate_values(s, 0.5, "minmax"), [[1.0, 1 + 0.5 * 0.2 / (0.4 + 1e-6), 1 + 0.5 * 0.4 / (0.4 + 1e-6)],
                                        [1.0, 1.0, 1 + 0.5 * 0.3 / (0.3 + 1e-6)]]
    )
    np.testing.assert_allclose(gate_values(s, 1.0, "raw"), 1 + s)
    np.testing.assert_allclose(gate_values(s, 2.0, "centered", kind="inverse"), 2 - gate_values(s, 2.0, "centered"))
    np.testing.assert_array_equal(gate_values(s, 9.0, kind="none"), np.ones_like(s))


@given(score_arrays, st.floats(0, 10))
@settings(max_examples=60, deadline=None)
def test_centered_gates_average_one_per_layer(s, alpha):
    g = gate_values(s, alpha, "centered", warn_negative=False)
    np.testing.assert_allclose(g.mean(axis=1), 1.0, atol=1e-9 * (1 + alpha))
    # order within a layer is preserved
    for layer in range(s.shape[0]):
        assert np.all(np.diff(g[layer][np.argsort(s[layer], kind="stable")]) >= -1e-12)


@given(score_arrays, st.floats(0, 3))
@settings(max_examples=60, deadline=None)
def test_minmax_gates_lie_in_one_to_one_plus_alpha(s, alpha):
    g = gate_values(s, alpha, "minmax")
    assert np.all(g >= 1.0 - 1e-12) and np.all(g <= 1.0 + alpha + 1e-12)
    n = normalize(s, "minmax")
    assert np.all((n.max(axis=1) > 1 - 1e-3) | (np.ptp(s, axis=1) < 1e-3))


@given(score_arrays, st.integers(0, 2**31 - 1))
@settings(max_examples=40, deadline=None)
def test_random_gates_ignore_scores_and_follow_the_seed(s, seed):
    g = gate_values(s, 1.0, kind="random", seed=seed)
    assert np.all(np.abs(g - 1.0) <= 1.0)
    np.testing.assert_array_equal(g, gate_values(s[::-1] * 0.3, 1.0, kind="random", seed=seed))


@given(score_arrays)
@settings(max_examples=30, deadline=None)
def test_alpha_zero_is_identity_for_every_norm_and_kind(s):
    for norm in ("centered", "minmax", "raw"):
        for kind in ("truthprobe", "inverse", "random", "shuffled", "none"):  # the paper_* gates ignore alpha
            np.testing.assert_array_equal(gate_values(s, 0.0, norm, kind), np.ones_like(s))


def test_negative_gates_warn_with_their_count():
    s = np.array([[0.5, 0.5, 1.0]])
    with pytest.warns(UserWarning, match=r"2 of 3 gates are negative"):
        gate_values(s, 10.0, "centered")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(alpha=float("nan")), "alpha: expected a finite number, found nan"),
        (dict(alpha=math.inf), "alpha: expected a finite number"),
        (dict(alpha="strong"), "found 'strong'"),
        (dict(alpha=1.0, norm="centred"), "norm: expected one of centered, minmax, raw, found 'centred'"),
        (dict(alpha=1.0, kind="reverse"), "gate: expected one of truthprobe, random, inverse, shuffled, paper_random, paper_inverse, none"),
    ],
)
def test_bad_settings(kwargs, message):
    with pytest.raises(GateConfigError, match=message):
        gate_values(np.ones((2, 2)), **kwargs)


def test_shuffled_gates_are_the_truthprobe_gates_permuted_within_each_layer():
    s = np.random.default_rng(2).uniform(0.4, 0.95, size=(6, 9))
    tp_gates = gate_values(s, 0.3, "minmax")
    shuffled = gate_values(s, 0.3, "minmax", kind="shuffled", seed=1)
    np.testing.assert_array_equal(np.sort(shuffled, axis=1), np.sort(tp_gates, axis=1))  # same values per layer
    assert not np.array_equal(shuffled, tp_gates)  # on other heads
    np.testing.assert_array_equal(shuffled, gate_values(s, 0.3, "minmax", kind="shuffled", seed=1))
    assert not np.array_equal(shuffled, gate_values(s, 0.3, "minmax", kind="shuffled", seed=2))
