"""Time to accuracy: what each search strategy makes of the same wall-clock budget on real covers.

    python -m benchmarks.time_to_accuracy --data discogs --budget-min 10                # every strategy, in turn
    python -m benchmarks.time_to_accuracy --data discogs --budget-min 10 --only asha    # one piece (resumable)
    python -m benchmarks.time_to_accuracy --data discogs --budget-min 10 --only default --seed 1
    python -m benchmarks.time_to_accuracy --data discogs --budget-min 10 --only knn,default --split-seed 1
    python -m benchmarks.time_to_accuracy --report                                      # table + plots so far
    python -m benchmarks.time_to_accuracy --smoke                                       # demo data, correctness

Strategies (:data:`STRATEGIES`): the kNN baseline and the default config (one run each), random search over the
``hparams_search=real`` space (fixed epochs), TPE + median pruning over today's default space, TPE + ASHA
(``hparams_search=real``), ASHA warm-started from the earlier sweeps of the same data set and seed, TPE with a
3-fold cross-validated objective (``data.cv_folds=3``), ASHA with every rung at 128 px (no progressive
resizing), and no search at all: the default config with three seeds, to promote as an ensemble. Every
piece is a real ``python experiments/run.py`` in a subprocess, in one work folder per data set (Optuna storage and
MLflow store shared, so a warm start finds the earlier studies). Each records best-so-far validation accuracy
against seconds since its process started (trial completions from Optuna, epochs from MLflow), and the test
accuracy of its best trial (``promote``: the test split is used once, at the end). Results are kept as JSON in
``benchmarks/results/time_to_accuracy/<data>/`` (:func:`result_name`) and assembled by ``--report``
(docs/benchmarks.md). ``--split-seed`` and ``--image-size`` run a piece on another split of the covers or at
another input size (:class:`Variant`): a test figure of 149 covers moves by several points with the split alone.
``--promote-top-k K`` and ``--promote-tta`` promote a sweep a second time, as ``promote.ensemble.top_k`` and
``promote.tta`` do (each adopted only when it beats the single best model on validation), and keep that test
accuracy beside the single best trial's (:class:`Composed`)."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import optuna
from optuna.trial import TrialState

from benchmarks._timing import machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "time_to_accuracy"
DATA = {  # name -> the run's data overrides
    "discogs": ["data=archives", "data.source=../shared/data/discogs-covers", "data.image_size=128"],
    "cifar10": ["data=archives", "data.source=../shared/data/cifar10-covers", "data.image_size=128"],
    "demo": ["data.demo.per_class=20", "data.image_size=32"],  # --smoke
}
SWEEP = ["hydra.sweeper.n_trials=1000"]  # the timeout is the budget
REAL_FIXED = ["hparams_search=real", "hydra.sweeper.scheduler=null", "trainer.epochs=6"]
STRATEGIES: dict[str, list[str]] = {
    "knn": ["experiment=knn"],
    "default": [],
    "random": ["-m", *SWEEP, *REAL_FIXED, "hydra/sweeper/sampler=random"],
    "tpe_median": ["-m", *SWEEP, "hparams_search=default"],
    "asha": ["-m", *SWEEP, "hparams_search=real"],
    "asha_warm": ["-m", *SWEEP, "hparams_search=real"],  # + warm_start_from and enqueue, see overrides()
    # the random search's space and epochs, TPE, each trial's objective the mean of 3 folds of train+val: a steadier
    # value to select on (docs/sweeps.md#robust-selection-on-small-data), three trainings per trial
    "cv": ["-m", *SWEEP, *REAL_FIXED, "data.cv_folds=3"],
    # no search: the default config with three seeds (a grid; the seeds follow --seed, see overrides()), to be
    # promoted as their ensemble (--promote-top-k 3): what the same minutes buy when spent on averaging, not searching
    "seeds": ["-m", *SWEEP, "hparams_search=curve"],
    # ASHA without progressive resizing: every rung at the data's 128 px (does the 64 px first rung rank worse?)
    "asha_128px": [
        "-m",
        *SWEEP,
        "hparams_search=real",
        "hydra.sweeper.scheduler.rungs=[{epochs:2,image_size:128},{epochs:5,image_size:128},{epochs:10,image_size:128}]",
    ],
}
# the default config's values of the hparams_search=real space: the warm start's first trial
DEFAULTS = "{optim.lr:0.003,loss:focal,aug:default,mixup.mixup_alpha:0.0,freeze.n_frozen:0}"
SMOKE = {  # tiny rungs and epochs for the demo data
    "asha": ["hydra.sweeper.scheduler.rungs=[{epochs:1,image_size:32},{epochs:2,image_size:48}]"],
    "other": ["trainer.epochs=1"],
}


@dataclass(frozen=True)
class Variant:
    """What a piece runs on besides its strategy and seed: another split of the same covers (``data.split_seed``:
    how much of a test figure is the luck of 149 test covers) and another input size (None: the data set's own,
    :data:`DATA`)."""

    split_seed: int = 0
    image_size: int | None = None

    @property
    def suffix(self) -> str:
        """``""`` for the data set's own split and size, else e.g. ``-split1-224px``."""
        split = f"-split{self.split_seed}" if self.split_seed else ""
        return split + (f"-{self.image_size}px" if self.image_size else "")

    def data_overrides(self, data: str) -> list[str]:
        ov = [o for o in DATA[data] if not (self.image_size and o.startswith("data.image_size="))]
        ov += [f"data.image_size={self.image_size}"] if self.image_size else []
        return ov + ([f"data.split_seed={self.split_seed}"] if self.split_seed else [])


@dataclass(frozen=True)
class Composed:
    """A second promotion of a sweep: an ensemble of its ``top_k`` best trials and/or test-time augmentation
    (``promote.ensemble.top_k``, ``promote.tta``), judged on validation against the single best model."""

    top_k: int = 1
    tta: bool = False

    def __bool__(self) -> bool:
        return self.top_k > 1 or self.tta

    @property
    def label(self) -> str:
        """E.g. ``top3+tta``: how the report names the composed result of a strategy."""
        return "+".join(([f"top{self.top_k}"] if self.top_k > 1 else []) + (["tta"] if self.tta else []))


def study_name(strategy: str, seed: int, variant: Variant = Variant()) -> str:
    return f"tta-{strategy}-s{seed}{variant.suffix}"


def overrides(
    strategy: str, data: str, seed: int, budget_s: float, work: Path, smoke: bool, variant: Variant = Variant()
) -> list[str]:
    """The command line of one piece."""
    # the seeds piece sweeps seed itself: a plain seed=... would be a fixed sweep argument replacing its grid
    seeding = f"curve.seeds='choice({seed},{seed + 1},{seed + 2})'" if strategy == "seeds" else f"seed={seed}"
    ov = [*STRATEGIES[strategy], *variant.data_overrides(data), f"paths.root_dir={work}", seeding]
    if "-m" in ov:
        ov += [
            f"hydra.sweeper.timeout={budget_s:g}",
            f"hydra.sweeper.study_name={study_name(strategy, seed, variant)}",
            f"hydra.sweeper.sampler.seed={seed}",
            f"hydra.sweep.dir={work}/multirun/{strategy}-s{seed}{variant.suffix}",
        ]
    else:
        ov.append(f"hydra.run.dir={work}/outputs/{strategy}-s{seed}{variant.suffix}")
    if strategy == "asha_warm":  # the earlier sweeps' trials as history (those that fit the space), the default first
        db = work / "mlruns" / "optuna.db"
        studies = optuna.get_all_study_names(f"sqlite:///{db}") if db.exists() else []
        earlier = [s for s in ("random", "asha") if study_name(s, seed, variant) in studies]
        if earlier:
            ov.append(f"hydra.sweeper.warm_start_from={study_name(earlier[-1], seed, variant)}")
        ov.append(f"hydra.sweeper.enqueue=[{DEFAULTS}]")
    if smoke:
        asha = "hparams_search=real" in ov and "hydra.sweeper.scheduler=null" not in ov
        ov = [o for o in ov if not o.startswith("hydra.sweeper.scheduler.rungs=")] + (SMOKE["asha"] if asha else [])
        ov += SMOKE["other"] if not asha and strategy != "knn" else []  # the kNN baseline trains no epochs
        ov += ["hydra.sweeper.n_trials=3"] if "-m" in ov else []
    return ov


def result_name(strategy: str, seed: int, budget_min: float, variant: Variant = Variant()) -> str:
    """The JSON file of one piece: a 30-minute headline sweep sits beside the 10-minute ranking of the same strategy,
    a piece on another split or input size beside the one on the data set's own."""
    return f"{strategy}-s{seed}{variant.suffix}-{budget_min:g}min.json"


def recorded_variant(result: dict) -> tuple[int, int | None]:
    """``(split_seed, image_size)`` of a kept result, read from its command line (the data's own when absent)."""
    found = dict(re.findall(r"\bdata\.(split_seed|image_size)=(\d+)", result["command"]))
    return int(found.get("split_seed", 0)), int(found["image_size"]) if "image_size" in found else None


def best_so_far(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """``(seconds, value)`` points in time order -> the running maximum, one point per improvement."""
    curve, best = [], -1.0
    for t, v in sorted(points):
        if v > best:
            best = v
            curve.append((round(t, 1), v))
    return curve


def trial_points(work: Path, name: str, started: float) -> tuple[list[tuple[float, float]], int]:
    """A sweep's completed trials as ``(seconds since start, value)``, and how many trials it ran."""
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{work}/mlruns/optuna.db")
    own = [t for t in study.trials if "warm_start_from" not in t.user_attrs]
    points = [(t.datetime_complete.timestamp() - started, t.value) for t in own if t.state == TrialState.COMPLETE]
    return points, len(own)


def epoch_points(client: mlflow.MlflowClient, run_id: str, started: float) -> list[tuple[float, float]]:
    """A single run's epochs as ``(seconds since start, val_acc)`` (the kNN baseline logs one)."""
    return [(m.timestamp / 1000 - started, m.value) for m in client.get_metric_history(run_id, "epoch/val_acc")]


def run_piece(
    strategy: str,
    data: str,
    seed: int,
    budget_min: float,
    work: Path,
    smoke: bool = False,
    out: Path | None = None,
    variant: Variant = Variant(),
    composed: Composed = Composed(),
) -> dict:
    """Run one strategy and return its result (kept as ``out/<data>/``:func:`result_name` with ``out``); a sweep with
    ``composed`` is promoted twice, alone and composed, and both test accuracies are kept."""
    from covers.serving.promote import promote

    work.mkdir(parents=True, exist_ok=True)
    ov = overrides(strategy, data, seed, budget_min * 60, work, smoke, variant)
    cmd = [sys.executable, "experiments/run.py", *ov]
    started = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{strategy} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    uri = f"sqlite:///{work}/mlruns/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("covers")
    if "-m" in ov:
        points, trials = trial_points(work, study_name(strategy, seed, variant), started)
        target = {"study_name": study_name(strategy, seed, variant)}
    else:
        (run,) = client.search_runs([exp.experiment_id], max_results=1, order_by=["attributes.start_time DESC"])
        points, trials = epoch_points(client, run.info.run_id, started), 1  # the kNN logs one "epoch"
        target = {"run_id": run.info.run_id}
    cache = str(work / ".cache")
    record = promote(uri, "covers", cache, model_name=f"tta-{strategy}", **target, device="cpu")
    if composed and "-m" in ov:
        options = {"ensemble": {"top_k": composed.top_k}, "tta": composed.tta, "device": "cpu"}
        again = promote(uri, "covers", cache, model_name=f"tta-{strategy}-{composed.label}", **target, **options)
        comp = again["composition"]
        composed_result = {"label": composed.label, "test_acc": again["candidate_test_acc"], **comp}
    curve = best_so_far(points)
    result = {
        "strategy": strategy,
        "data": data,
        "seed": seed,
        "budget_s": budget_min * 60,
        "wall_s": round(wall, 1),
        "trials": trials,
        "best_val_acc": curve[-1][1] if curve else None,
        "best_val_acc_in_budget": max((v for t, v in curve if t <= budget_min * 60), default=None),
        "test_acc": record["candidate_test_acc"],
        "curve": curve,
        "command": "python experiments/run.py " + " ".join(ov),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "machine": machine(),
    }
    if composed and "-m" in ov:
        result["composed"] = composed_result
    if out is not None:
        path = out / data / result_name(strategy, seed, budget_min, variant)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
    return result


def time_to_reach(curve: list[list[float]], value: float) -> float | None:
    """Seconds until a best-so-far curve first reaches ``value`` (None: never)."""
    return next((t for t, v in curve if v >= value), None)


def across_splits(results: list[dict]) -> list[str]:
    """A markdown table of each strategy run on two or more splits: its mean test accuracy, and against the default
    run on the same splits (same seed, budget and input size) the mean paired difference, on how many splits it is
    ahead, and a two-sided paired t-test over the splits (scipy ``ttest_rel``)."""
    from scipy.stats import ttest_rel

    groups: dict[tuple, dict[int, float]] = {}
    for r in results:
        split, px = recorded_variant(r)
        groups.setdefault((r["strategy"], r["seed"], r["budget_s"], px), {})[split] = r["test_acc"]
        if "composed" in r:  # the same sweep promoted as an ensemble and/or with TTA: its own row
            label = f"{r['strategy']} {r['composed']['label']}"
            groups.setdefault((label, r["seed"], r["budget_s"], px), {})[split] = r["composed"]["test_acc"]
    lines = []
    by_setting = sorted(groups.items(), key=lambda g: (g[0][1], g[0][2], g[0][3] or 0, g[0][0]))  # px may be None
    for (strategy, seed, budget, px), tests in by_setting:
        if len(tests) < 2:
            continue
        default = groups.get(("default", seed, budget, px), {})
        common = sorted(set(tests) & set(default))
        mean = sum(tests.values()) / len(tests)
        row = f"| {strategy} | {seed} | {px or '—'} | {budget:.0f} | {','.join(map(str, sorted(tests)))} | {mean:.3f} |"
        if strategy != "default" and len(common) >= 2:
            diffs = [tests[k] - default[k] for k in common]
            p = ttest_rel([tests[k] for k in common], [default[k] for k in common]).pvalue
            ahead = sum(d > 0 for d in diffs)
            row += f" {sum(diffs) / len(diffs):+.3f} | {ahead} of {len(common)} | {p:.3f} |"
        else:
            row += " — | — | — |"
        lines.append(row)
    if not lines:
        return []
    head = "| strategy | seed | px | budget s | splits | mean test | − default (paired) | ahead on | p |"
    return ["", head, "|---|---|---|---|---|---|---|---|---|", *lines]


def report(data_sets: list[str], results_dir: Path = RESULTS, figures: Path = ROOT / "docs" / "results") -> str:
    """A markdown table per data set, and a plot of best-so-far validation accuracy against time in ``figures``."""
    import matplotlib.pyplot as plt

    lines = []
    for data in data_sets:
        results = [json.loads(p.read_text()) for p in sorted((results_dir / data).glob("*.json"))]
        if not results:
            continue
        lines += [
            f"#### {data} ({results[0]['machine']['cores']} cores)",
            "",
            "| strategy | seed | split | px | budget s | wall s | trials | best val | best val in budget | test "
            "| commit | date |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        fig, ax = plt.subplots(figsize=(9, 4.5))
        ax.set_prop_cycle(color=plt.cm.tab20.colors)  # up to 20 pieces, each its own colour
        own_px = recorded_variant({"command": " ".join(DATA.get(data, []))})[1]
        for r in results:
            best = r["best_val_acc_in_budget"]
            split, px = recorded_variant(r)
            lines.append(
                f"| {r['strategy']} | {r['seed']} | {split} | {px or '—'} | {r['budget_s']:.0f} | {r['wall_s']:.0f} | "
                f"{r['trials']} | "
                f"{r['best_val_acc']:.3f} | {best if best is None else f'{best:.3f}'} | {r['test_acc']:.3f} | "
                f"{r['commit']} | {r['machine']['date']} |"
            )
            if "composed" in r:
                c = r["composed"]
                tried = ", ".join(f"{k} {v:.3f}" for k, v in c["val_acc"].items())
                adopted = "+".join(c["adopted"]) or "single"
                lines.append(
                    f"| {r['strategy']} {c['label']} (adopted: {adopted}; val {tried}) | {r['seed']} | {split} | "
                    f"{px or '—'} | | | | | | {c['test_acc']:.3f} | {r['commit']} | {r['machine']['date']} |"
                )
            if r["curve"] and split == 0:  # validation accuracies of other splits are of other covers
                t, v = zip(*r["curve"], strict=True)
                size = f", {px} px" if px != own_px else ""
                label = f"{r['strategy']} s{r['seed']}, {r['budget_s'] / 60:g} min{size}"
                ax.step([*t, r["wall_s"]], [*v, v[-1]], where="post", label=label)
        for r in [r for r in results if r["strategy"] == "asha"]:  # against random search of its seed, split, budget
            same = ("random", r["seed"], r["budget_s"], recorded_variant(r))
            rnd = next(
                (x for x in results if (x["strategy"], x["seed"], x["budget_s"], recorded_variant(x)) == same), None
            )
            if rnd is None or rnd["best_val_acc"] is None:
                continue
            reach = time_to_reach(r["curve"], rnd["best_val_acc"])
            share = "never" if reach is None else f"{reach:.0f} s = {reach / rnd['budget_s']:.2f} of its budget"
            lines += [
                "",
                f"ASHA (seed {r['seed']}, {r['budget_s']:.0f} s) reaches random search's final best "
                f"({rnd['best_val_acc']:.3f}): {share}",
            ]
        ax.set(
            xlabel="seconds since start",
            ylabel="best validation accuracy so far",
            title=f"time to accuracy: {data} (split 0)",
        )
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        fig.savefig(figures / f"time_to_accuracy_{data}.png", dpi=110)
        plt.close(fig)
        lines += [*across_splits(results), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=["discogs", "cifar10"], default="discogs")
    parser.add_argument("--budget-min", type=float, default=10.0, help="wall-clock budget of each sweep")
    parser.add_argument("--only", help="comma-separated strategies (default: all, in order)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split-seed", type=int, default=0, help="data.split_seed: another split of the covers")
    parser.add_argument("--image-size", type=int, help="input size (default: the data set's, 128 px)")
    parser.add_argument("--work", type=Path, help="work folder (default: /tmp/covers-tta/<data>)")
    parser.add_argument("--promote-top-k", type=int, default=1, help="also promote an ensemble of a sweep's K best")
    parser.add_argument("--promote-tta", action="store_true", help="also promote with test-time augmentation")
    parser.add_argument("--report", action="store_true", help="print the tables and write the plots")
    parser.add_argument("--smoke", action="store_true", help="every strategy on the demo data, seconds each")
    args = parser.parse_args()
    if args.report:
        print(report(["discogs", "cifar10"]))
        return
    data = "demo" if args.smoke else args.data
    work = args.work or Path("/tmp/covers-tta") / data
    for strategy in args.only.split(",") if args.only else list(STRATEGIES):
        if strategy not in STRATEGIES:
            parser.error(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
        budget = 1.0 if args.smoke else args.budget_min  # smoke: n_trials=3 ends the sweeps first
        r = run_piece(
            strategy,
            data,
            args.seed,
            budget,
            work,
            smoke=args.smoke,
            out=None if args.smoke else RESULTS,
            variant=Variant(args.split_seed, args.image_size),
            composed=Composed(args.promote_top_k, args.promote_tta),
        )
        print(json.dumps({k: v for k, v in r.items() if k not in ("curve", "machine")}), flush=True)


if __name__ == "__main__":
    main()
