"""Multi-fidelity search with promotion (asynchronous successive halving, ASHA, as Syne Tune's promotion type).

Every new configuration trains its first rung (few epochs, small images). Whenever a slot is free, the highest
rung with a promotable configuration goes first: a configuration is promotable at rung k once it is among the best
``1 / reduction_factor`` of the configurations that completed rung k and has not been promoted yet. A promoted
configuration *continues* from its checkpoint in the same MLflow run (its epochs and curves go on, at the next
rung's image size: progressive resizing) instead of restarting. Otherwise a new configuration starts.

In Optuna each rung of a configuration is one trial: the first counts in ``n_trials``; a later rung is enqueued
with the same parameters and the user attributes below, so any worker sharing the study may run it (waiting trials
are claimed atomically), and a retry after a crash keeps them. Its value is the configuration's best validation
accuracy so far, so the sweep's best trial is a configuration at the highest rung it reached."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from covers.sweep import budget
from covers.sweep.search_space import SearchSpaceError

log = logging.getLogger(__name__)

RUNG, RESUME_RUN = budget.RUNG, budget.RESUME_RUN


@dataclass(frozen=True)
class Rung:
    """A rung: train to ``epochs`` in total (counted from the configuration's first epoch) at ``image_size`` px
    (None: ``data.image_size``)."""

    epochs: int
    image_size: int | None = None


class PromotionASHA:
    """The promotion rule and what each rung's job is told (``hydra/sweeper/scheduler=asha``)."""

    def __init__(self, rungs: Sequence[Any], reduction_factor: int = 3) -> None:
        self.rungs = [r if isinstance(r, Rung) else Rung(int(r["epochs"]), r.get("image_size")) for r in rungs]
        self.reduction_factor = int(reduction_factor)
        epochs = [r.epochs for r in self.rungs]
        if len(self.rungs) < 2 or epochs[0] < 1 or any(b <= a for a, b in itertools.pairwise(epochs)):
            raise SearchSpaceError(f"scheduler asha: rungs need 2 or more strictly increasing epochs, got {epochs}")
        if self.reduction_factor < 2:
            raise SearchSpaceError(f"scheduler asha: reduction_factor must be >= 2, got {reduction_factor}")

    def label(self, user_attrs: dict) -> str:
        """`` (rung 2/3 of trial 4)`` for a promoted configuration's trial, else empty."""
        if budget.CONTINUES not in user_attrs:
            return ""
        return f" (rung {int(user_attrs[RUNG]) + 1}/{len(self.rungs)} of trial {user_attrs[budget.CONTINUES]})"

    def describe(self) -> str:
        """``ASHA η=3: 1 ep@64px → 3 ep@96px → 6 ep`` (for the parent run's params)."""
        steps = [f"{r.epochs} ep" + (f"@{r.image_size}px" if r.image_size else "") for r in self.rungs]
        return f"ASHA η={self.reduction_factor}: " + " → ".join(steps)

    def check_space(self, distributions: dict) -> None:
        """The rungs set the epochs (and image sizes): those keys cannot also be searched."""
        owned = {"trainer.epochs"} | ({"data.image_size"} if any(r.image_size for r in self.rungs) else set())
        clash = sorted(owned & {k.lstrip("+~") for k in distributions})
        if clash:
            raise SearchSpaceError(
                f"scheduler asha sets {clash} per rung, so they cannot be searched: use hparams_search=real, or an "
                "hparams_search of your own without them (docs/sweeps.md#multi-fidelity-with-promotion)"
            )

    def promotion(self, trials: list[FrozenTrial], maximize: bool = True) -> tuple[FrozenTrial, int] | None:
        """The configuration to promote now and its next rung, or None: the highest rung first; at rung k the
        best ``floor(n_k / reduction_factor)`` of the ``n_k`` configurations that completed it, not yet promoted
        (ties: the earlier trial)."""
        own = budget.own(trials)
        promoted = {int(t.user_attrs[budget.CONTINUES]) for t in own if budget.CONTINUES in t.user_attrs}
        for k in reversed(range(len(self.rungs) - 1)):
            done = [t for t in own if t.state == TrialState.COMPLETE and t.user_attrs.get(RUNG, 0) == k]
            done.sort(key=lambda t: (-t.value if maximize else t.value, t.number))
            for t in done[: math.floor(len(done) / self.reduction_factor)]:
                if t.number not in promoted and t.user_attrs.get("mlflow_run_id"):
                    return t, k + 1
        return None

    def promote(self, study: optuna.Study) -> bool:
        """Enqueue the next promotion (see :meth:`promotion`); False when there is none."""
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        found = self.promotion(study.get_trials(deepcopy=False), maximize)
        if found is None:
            return False
        source, rung = found
        attrs = {RUNG: rung, budget.CONTINUES: source.number, RESUME_RUN: source.user_attrs["mlflow_run_id"]}
        study.enqueue_trial(source.params, user_attrs=attrs, skip_if_exists=False)
        log.info("trial %d promoted to rung %d of %d (%s)", source.number, rung + 1, len(self.rungs), self.describe())
        return True

    def overrides(self, user_attrs: dict) -> list[str]:
        """The rung's settings for its job: total epochs, image size, the rung counted from 1 (as epochs are), where
        to resume from, whether to save a checkpoint for the next rung."""
        k = int(user_attrs.get(RUNG, 0))
        rung = self.rungs[k]
        ov = [f"trainer.epochs={rung.epochs}", f"trial.rung={k + 1}", f"trial.checkpoint={k < len(self.rungs) - 1}"]
        if rung.image_size:
            ov.append(f"data.image_size={int(rung.image_size)}")
        if RESUME_RUN in user_attrs:
            ov.append(f"trial.resume_run_id={user_attrs[RESUME_RUN]}")
        return ov
