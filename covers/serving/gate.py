"""The promotion gate: is the candidate better than chance, and not worse than the kNN baseline, on the same test
covers? Exact binomial tests (scipy): one-sided against chance, McNemar's on the paired predictions."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binomtest

from covers.training.intervals import format_interval, wilson_interval

ALPHA = 0.05


@dataclass(frozen=True)
class GateResult:
    """Both models' test accuracies with 95 % intervals, chance, the two tests and the decision."""

    n: int
    candidate_acc: float
    candidate_ci: tuple[float, float]
    chance: float
    p_above_chance: float
    baseline_acc: float | None
    baseline_ci: tuple[float, float] | None
    candidate_only: int | None  # covers the candidate gets right and the baseline wrong
    baseline_only: int | None  # ... and the other way round
    mcnemar_p: float | None
    passed: bool
    reason: str

    def tags(self) -> dict[str, str]:
        """The numbers and the decision as model-version tags ``gate.*``."""
        return {f"gate.{k}": str(v) for k, v in asdict(self).items()}

    def lines(self) -> list[str]:
        """What promote prints: both accuracies with intervals, chance, the tests and the decision."""
        out = [
            f"candidate test_acc {format_interval(self.candidate_acc, *self.candidate_ci)} on {self.n} covers; "
            f"chance {self.chance:.3f} (always the most frequent training genre), one-sided p={self.p_above_chance:.3g}"
        ]
        if self.baseline_acc is not None:
            out.append(
                f"kNN baseline test_acc {format_interval(self.baseline_acc, *self.baseline_ci)}; McNemar p="
                f"{self.mcnemar_p:.3g} ({self.candidate_only} covers only the candidate gets right, "
                f"{self.baseline_only} only the baseline)"
            )
        out.append(f"gate: {'passed' if self.passed else 'refused'}: {self.reason}")
        return out


def chance_level(test_target: np.ndarray, train_target: np.ndarray) -> float:
    """The test accuracy of always answering the most frequent training class (1/K for balanced classes)."""
    values, counts = np.unique(train_target, return_counts=True)
    return float((np.asarray(test_target) == values[counts.argmax()]).mean())


def mcnemar(candidate_right: np.ndarray, baseline_right: np.ndarray) -> tuple[int, int, float]:
    """McNemar's exact test on paired correctness: the discordant counts and the two-sided p-value."""
    b = int((candidate_right & ~baseline_right).sum())
    c = int((~candidate_right & baseline_right).sum())
    return b, c, (float(binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0)


def gate(
    target: np.ndarray,
    candidate_pred: np.ndarray,
    chance: float,
    baseline_pred: np.ndarray | None = None,
    alpha: float = ALPHA,
) -> GateResult:
    """Pass when the candidate is significantly better than ``chance`` (one-sided exact binomial test at
    ``alpha``) and its accuracy is not below the baseline's on the same covers; McNemar's test says whether the
    two differ significantly (reported, and the reason names it)."""
    target = np.asarray(target)
    right = np.asarray(candidate_pred) == target
    n, k = len(target), int(right.sum())
    acc = k / n if n else float("nan")
    p_chance = float(binomtest(k, n, min(max(chance, 1e-12), 1 - 1e-12), alternative="greater").pvalue)
    base_acc = base_ci = b = c = p_mc = None
    if baseline_pred is not None:
        base_right = np.asarray(baseline_pred) == target
        base_acc, base_ci = float(base_right.mean()), wilson_interval(int(base_right.sum()), n)
        b, c, p_mc = mcnemar(right, base_right)
    if p_chance >= alpha:
        passed, reason = False, f"test_acc {acc:.3f} is not significantly above chance {chance:.3f} (p={p_chance:.3g})"
    elif base_acc is not None and acc < base_acc:
        passed = False
        reason = f"test_acc {acc:.3f} is below the kNN baseline's {base_acc:.3f} (McNemar p={p_mc:.3g})"
    else:
        passed = True
        reason = f"test_acc {acc:.3f} is significantly above chance {chance:.3f} (p={p_chance:.3g})"
        if base_acc is not None:
            versus = "significantly better than" if p_mc < alpha else "not significantly different from"
            reason += f" and {versus} the kNN baseline's {base_acc:.3f} (McNemar p={p_mc:.3g})"
    return GateResult(n, acc, wilson_interval(k, n), chance, p_chance, base_acc, base_ci, b, c, p_mc, passed, reason)
