"""Where a sweep trial's start-up goes: a real sweep run in this process with timers on each step.

    python -m benchmarks.startup                 # default config, 8 trials x 1 epoch, random sampler
    python -m benchmarks.startup --smoke         # 3 tiny trials, for correctness only

Wraps the sweeper's ask and launch, Hydra's config composition and job set-up, and covers' task steps with
wall-clock timers (plus time spent in the garbage collector), runs ``experiments/run.py -m`` in-process, and
prints for each step the median offset from "ask" over the warm trials (all but the first) up to the first
epoch. ``benchmarks.sweep`` measures the same span from the stores' clocks, without instrumentation."""

from __future__ import annotations

import argparse
import collections
import functools
import gc
import importlib
import runpy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._timing import machine, report

ROOT = Path(__file__).resolve().parents[1]
# (module, attribute, label): the steps of a trial's start-up, in the order they run
STEPS = [
    ("covers.sweep.sweeper", "OptunaSweeperImpl._launch", "sweeper launches the job"),
    ("covers.sweep.compose", "SweepConfigLoader.load_sweep_config", "config composition"),
    ("hydra.core.utils", "run_job", "Hydra job set-up"),
    ("hydra.core.utils", "_save_config", ".hydra/*.yaml"),
    ("covers.run.finetune", "train", "task starts"),
    ("covers.run.finetune", "reporter_for", "link to the Optuna trial"),
    ("covers.tracking.runs", "setup_tracking", "MLflow experiment"),
    ("mlflow", "start_run", "MLflow run"),
    ("covers.run.finetune", "load_data", "data bundle"),
    ("covers.run.finetune", "log_run_record", "params + config/manifest artifacts"),
    ("covers.run.finetune", "build_training", "model copy, freezing, loss, loaders"),
    ("covers.training.loop", "Runtime.place", "model to device/memory format"),
    ("covers.training.loop", "train_one_epoch", "first epoch starts"),
]


GC = "garbage collection (during the above)"


class Timeline:
    """Timestamps of step starts/ends per trial, and the running total of garbage-collection time."""

    def __init__(self) -> None:
        self.trial, self.events, self.gc_total, self._gc_start = -1, [], 0.0, 0.0
        self.originals: list[tuple[Any, str, Any]] = []

    def gc_callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            self.gc_total += time.perf_counter() - self._gc_start

    def mark(self, label: str) -> None:
        self.events.append((self.trial, label, time.perf_counter(), self.gc_total))

    def wrap(self, module: str, attr: str, label: str, new_trial: bool = False) -> None:
        path = attr.split(".")
        owner = importlib.import_module(module)
        for part in path[:-1]:
            owner = getattr(owner, part)
        fn = getattr(owner, path[-1])

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if new_trial:
                self.trial += 1
            self.mark(label)
            try:
                return fn(*args, **kwargs)
            finally:
                self.mark(f"{label} (end)")

        self.originals.append((owner, path[-1], fn))
        setattr(owner, path[-1], timed)

    def unwrap(self) -> None:
        for owner, name, fn in reversed(self.originals):
            setattr(owner, name, fn)

    def medians(self) -> list[dict]:
        """Per step, over the warm trials (medians): when it starts after the trial's ask and how long it takes
        (a repeated step, such as Hydra's three ``.hydra`` files, from its first start to its last end)."""
        by_trial = collections.defaultdict(list)
        for trial, label, t, g in self.events:
            by_trial[trial].append((label, t, g))
        starts, takes = collections.defaultdict(list), collections.defaultdict(list)
        for trial, events in by_trial.items():
            first = next((t for label, t, _ in events if label == STEPS[-1][2]), None)
            if trial < 1 or first is None:
                continue
            t0, g0 = events[0][1], events[0][2]
            seen: dict[str, float] = {}
            took: dict[str, float] = {}
            for label, t, g in events:
                if t > first:
                    break
                if label.endswith(" (end)"):
                    took[label[:-6]] = t - seen[label[:-6]]  # a repeated step: its last end
                elif label not in seen:
                    seen[label] = t
                    starts[label].append(t - t0)
                if label == STEPS[-1][2]:
                    starts[GC].append(0.0)
                    took[GC] = g - g0
            for label, value in took.items():
                takes[label].append(value)
        return [
            {"step": k, "starts_at_s": _median(v), "takes_s": _median(takes[k]) if takes.get(k) else None}
            for k, v in starts.items()
        ]


def _median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2]


def run(n_trials: int = 8, smoke: bool = False) -> dict:
    """A sweep of ``n_trials`` one-epoch trials of the default config (random sampler, no pruning)."""
    timeline = Timeline()
    timeline.wrap("covers.sweep.sweeper", "OptunaSweeperImpl._ask", "ask", new_trial=True)
    for module, attr, label in STEPS:
        timeline.wrap(module, attr, label)
    gc.callbacks.append(timeline.gc_callback)
    argv = sys.argv
    try:
        with tempfile.TemporaryDirectory() as tmp:
            overrides = [
                f"paths.root_dir={tmp}",
                f"hydra.sweep.dir={tmp}/multirun",
                "hydra.sweeper.study_name=startup",
                "trainer.device=cpu",
                f"hydra.sweeper.n_trials={3 if smoke else n_trials}",
                "trainer.epochs=choice(1)",
                "hydra/sweeper/sampler=random",
                "hydra/sweeper/pruner=none",
                "optim.lr=tag(log, interval(1e-5, 3e-2))",
            ]
            if smoke:
                overrides += ["data.image_size=32", "data.demo.per_class=20"]
            sys.argv = [str(ROOT / "experiments" / "run.py"), "-m", *overrides]
            try:
                runpy.run_path(sys.argv[0], run_name="__main__")
            except SystemExit as e:  # Hydra's main exits with the job status
                if e.code:
                    raise
    finally:
        sys.argv = argv
        gc.callbacks.remove(timeline.gc_callback)
        timeline.unwrap()
    return {"machine": machine(), "trials": 3 if smoke else n_trials, "rows": timeline.medians()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-trials", type=int, default=8)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    report(run(args.n_trials, args.smoke), args.json)


if __name__ == "__main__":
    main()
