"""95 % intervals against hand computations, and the promotion gate's statistics on known predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from covers.serving.gate import chance_level, gate, mcnemar
from covers.training.intervals import balanced_accuracy_interval, format_interval, interval_metrics, wilson_interval


def _wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize(("k", "n"), [(45, 147), (1, 16), (0, 20), (20, 20), (53, 149)])
def test_wilson_interval_matches_the_formula(k, n):
    assert wilson_interval(k, n) == pytest.approx(_wilson_by_hand(k, n), abs=1e-12)


def test_known_interval_and_its_text():
    low, high = wilson_interval(53, 149)  # 0.356 on discogs-covers' 149 test covers
    assert (round(low, 3), round(high, 3)) == (0.283, 0.435)
    assert format_interval(53 / 149, low, high) == "0.356 (95 % CI 0.283–0.435)"
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_balanced_accuracy_interval_brackets_the_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, 150)
    pred = np.where(rng.random(150) < 0.5, target, rng.integers(0, 5, 150))
    low, high = balanced_accuracy_interval(target, pred)
    from sklearn.metrics import balanced_accuracy_score

    assert low < balanced_accuracy_score(target, pred) < high and 0.1 < high - low < 0.3
    assert balanced_accuracy_interval(target, pred) == (low, high), "the same resamples every time"
    assert balanced_accuracy_interval(target, target) == (1.0, 1.0)


def test_interval_metrics_keys():
    target = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 0])
    m = interval_metrics(target, pred, "test_")
    assert set(m) == {"test_acc_ci_low", "test_acc_ci_high", "test_balanced_acc_ci_low", "test_balanced_acc_ci_high"}
    assert (m["test_acc_ci_low"], m["test_acc_ci_high"]) == pytest.approx(_wilson_by_hand(4, 6))


def _predictions(target: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Predictions that are right exactly where ``right`` is (wrong ones: the next class)."""
    return np.where(right, target, (target + 1) % 5)


TARGET = np.repeat(np.arange(5), 20)  # 100 test covers, 5 balanced genres
TRAIN = np.repeat(np.arange(5), 160)


def test_gate_refuses_a_model_that_predicts_one_class():
    chance = chance_level(TARGET, TRAIN)
    assert chance == pytest.approx(0.2)
    result = gate(TARGET, np.zeros(100, dtype=int), chance)
    assert not result.passed and result.candidate_acc == pytest.approx(0.2)
    assert "not significantly above chance 0.200" in result.reason and result.p_above_chance > 0.5


def test_gate_accepts_a_clearly_better_model_and_refuses_one_below_the_baseline():
    rng = np.random.default_rng(1)
    base_right = rng.random(100) < 0.3
    better = gate(
        TARGET, _predictions(TARGET, base_right | (rng.random(100) < 0.5)), 0.2, _predictions(TARGET, base_right)
    )
    assert better.passed and "significantly better than the kNN baseline" in better.reason and better.baseline_only == 0
    assert better.mcnemar_p == pytest.approx(2 * 0.5**better.candidate_only)  # exact McNemar: all discordant one way
    worse = gate(TARGET, _predictions(TARGET, np.arange(100) < 50), 0.2, _predictions(TARGET, np.arange(100) < 60))
    assert not worse.passed and "below the kNN baseline's 0.600" in worse.reason
    assert (worse.candidate_only, worse.baseline_only) == (0, 10) and worse.p_above_chance < 1e-6
    assert worse.tags()["gate.passed"] == "False" and any("McNemar p=" in line for line in worse.lines())


def test_mcnemar_counts_only_the_discordant_pairs():
    cand = np.array([1, 1, 1, 0, 0, 1, 1, 0], dtype=bool)
    base = np.array([1, 0, 0, 1, 0, 1, 0, 0], dtype=bool)
    b, c, p = mcnemar(cand, base)
    assert (b, c) == (3, 1) and p == pytest.approx(0.625)  # P(|X-2|>=1), X~Bin(4, 1/2): 1 - 6/16
