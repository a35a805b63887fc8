"""Benchmarks in smoke mode: they run end to end and report finite figures (no timing assertions)."""

from __future__ import annotations

import importlib.metadata
import json
import math

import pytest

from benchmarks import _timing, faiss_index, loader, runtime, sweep, trainer


def _finite(rows: list[dict]) -> bool:
    return all(math.isfinite(v) for row in rows for v in row.values() if isinstance(v, float))


def test_a_result_names_the_package_versions_it_was_measured_with():
    """Nothing pins timm, albumentations, numpy… (no lock file): a figure that moves with the same commit must show
    which versions it came from."""
    packages = _timing.machine()["packages"]
    assert set(packages) == set(_timing.PACKAGES)
    assert packages["timm"] == importlib.metadata.version("timm")
    assert packages["albumentations"] == importlib.metadata.version("albumentations")
    assert _timing.package_versions(("no-such-package-covers",)) == {"no-such-package-covers": "absent"}


def test_trainer_benchmark_smoke():
    result = trainer.run(smoke=True)
    names = [r["row"] for r in result["rows"]]
    assert names[0] == "trainer vs bare loop" and names[-1] == "embedding vs bare forward" and len(names) == 4
    assert _finite(result["rows"]) and all(r["ratio"] > 0 for r in result["rows"])


def test_loader_benchmark_smoke():
    result = loader.run(smoke=True, sizes=(32,), workers=(0, 1), batch=8)
    rows = [(r["workers"], r["design"]) for r in result["rows"]]
    assert rows == [(0, "uint8"), (0, "float32"), (1, "uint8"), (1, "float32")] and result["images"] == 16
    assert _finite(result["rows"]) and all(r["img_s"] > 0 and r["main_cpu_us_per_img"] >= 0 for r in result["rows"])


def test_runtime_benchmark_smoke():
    result = runtime.run(smoke=True)
    rows = {r["variant"]: r for r in result["rows"]}
    assert list(rows) == ["default", "contiguous", "one_thread"] and rows["default"]["train_vs_default"] == 1.0
    assert rows["contiguous"]["embed_img_s"] > 0 and rows["one_thread"]["embed_img_s"] is None
    assert _finite(result["rows"])


def test_faiss_benchmark_smoke():
    result = faiss_index.run(smoke=True)
    rows = {r["index"]: r for r in result["rows"]}
    assert set(rows) == {"flat", "ivf", "hnsw"} and rows["flat"]["recall@10"] == 1.0
    assert 0.5 < rows["hnsw"]["recall@10"] <= 1.0 and _finite(result["rows"])


@pytest.mark.slow
def test_sweep_benchmark_smoke():
    result = sweep.run(smoke=True)
    (full,) = result["rows"]
    assert full["sweep"] == "no_pruning" and full["trials"] == 2 and full["trial_epochs"] == 4
    phases = ("warm_trial_startup_s", "wrapup_s", "between_epochs_s", "between_trials_s", "mean_epoch_s")
    assert all(full[k] > 0 for k in phases)
    assert _finite(result["rows"])


@pytest.mark.slow
def test_time_to_accuracy_smoke(tmp_path):
    """The kNN baseline and an ASHA sweep on the demo data, read back and tested once, then the report."""
    from benchmarks import time_to_accuracy as tta

    work, out = tmp_path / "work", tmp_path / "results"
    knn = tta.run_piece("knn", "demo", 0, 1.0, work, smoke=True, out=out)
    assert knn["trials"] == 1 and 0 <= knn["test_acc"] <= 1 and knn["best_val_acc"] == knn["curve"][-1][1]
    composed = tta.Composed(top_k=2, tta=True)
    asha = tta.run_piece("asha", "demo", 0, 1.0, work, smoke=True, out=out, composed=composed)
    assert asha["trials"] == 4  # 3 configurations, the best of them promoted once
    # promoted a second time, as an ensemble/with TTA: each variant scored on validation, adopted only if better
    comp = asha["composed"]
    assert comp["label"] == "top2+tta" and {"single", "tta"} <= set(comp["val_acc"]) and 0 <= comp["test_acc"] <= 1
    assert all(comp["val_acc"][k] > comp["val_acc"]["single"] for k in comp["adopted"])
    if not comp["adopted"]:  # the same single model, tested again
        assert comp["test_acc"] == asha["test_acc"]
    values = [v for _, v in asha["curve"]]
    assert values == sorted(values) and 0 <= asha["test_acc"] <= 1 and asha["best_val_acc"] == values[-1]
    assert sorted(p.name for p in (out / "demo").glob("*.json")) == ["asha-s0-1min.json", "knn-s0-1min.json"]
    table = tta.report(["demo"], out, tmp_path)
    assert "| asha | 0 |" in table and "| knn | 0 |" in table and "| asha top2+tta (adopted: " in table
    assert (tmp_path / "time_to_accuracy_demo.png").exists()


def test_time_to_accuracy_warm_start_follows_the_earlier_sweep_of_its_seed(tmp_path):
    import optuna

    from benchmarks import time_to_accuracy as tta

    cold = tta.overrides("asha_warm", "discogs", 0, 600, tmp_path, smoke=False)  # a fresh work folder: no stores
    (tmp_path / "mlruns").mkdir()
    storage = f"sqlite:///{tmp_path}/mlruns/optuna.db"
    assert not any("warm_start_from" in o for o in cold) and "hydra.sweeper.timeout=600" in cold
    optuna.create_study(study_name="tta-random-s0", storage=storage)
    assert "hydra.sweeper.warm_start_from=tta-random-s0" in tta.overrides(
        "asha_warm", "discogs", 0, 600, tmp_path, False
    )
    optuna.create_study(study_name="tta-asha-s0", storage=storage)
    warm = tta.overrides("asha_warm", "discogs", 0, 600, tmp_path, smoke=False)
    assert "hydra.sweeper.warm_start_from=tta-asha-s0" in warm and f"hydra.sweeper.enqueue=[{tta.DEFAULTS}]" in warm
    assert "data.source=../shared/data/discogs-covers" in warm and "hparams_search=real" in warm


def test_time_to_accuracy_cv_strategy_selects_on_folds_without_rungs(tmp_path):
    from benchmarks import time_to_accuracy as tta

    ov = tta.overrides("cv", "discogs", 1, 600, tmp_path, smoke=False)
    assert {"-m", "hparams_search=real", "hydra.sweeper.scheduler=null", "data.cv_folds=3"} <= set(ov)
    assert "hydra.sweeper.study_name=tta-cv-s1" in ov and "hydra.sweeper.timeout=600" in ov
    assert "trainer.epochs=1" in tta.overrides("cv", "demo", 0, 60, tmp_path, smoke=True)


def test_time_to_accuracy_seeds_strategy_repeats_the_default_config_with_three_seeds(tmp_path):
    from benchmarks import time_to_accuracy as tta

    ov = tta.overrides("seeds", "discogs", 1, 600, tmp_path, smoke=False)
    assert {
        "-m",
        "hparams_search=curve",
        "curve.seeds='choice(1,2,3)'",
        "hydra.sweeper.study_name=tta-seeds-s1",
    } <= set(ov)
    assert not any(o.startswith(("optim.", "trainer.epochs", "hydra/sweeper/sampler")) for o in ov)  # the defaults
    # a plain seed=1 is a fixed sweep argument: it replaced the seed grid, and the piece ran one trial
    assert not any(o.startswith("seed=") for o in ov)


def test_time_to_accuracy_report_compares_asha_with_random_search_of_its_seed_and_budget(tmp_path):
    """A 30-minute headline sweep is kept beside the 10-minute ranking; ASHA's time to reach random search's best
    reads the random search of its own budget."""
    from benchmarks import time_to_accuracy as tta

    def piece(strategy: str, budget_min: int, curve: list[list[float]]) -> None:
        record = {
            "strategy": strategy,
            "seed": 0,
            "budget_s": budget_min * 60,
            "wall_s": budget_min * 60 + 5,
            "trials": len(curve),
            "best_val_acc": curve[-1][1],
            "best_val_acc_in_budget": curve[-1][1],
            "test_acc": 0.5,
            "curve": curve,
            "command": "python experiments/run.py -m seed=0",
            "commit": "abc1234",
            "machine": {"cores": 2, "date": "2026-12-02"},
        }
        path = tmp_path / "results" / "demo" / tta.result_name(strategy, 0, budget_min)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record))

    piece("random", 10, [[100.0, 0.4]])
    piece("random", 30, [[100.0, 0.4], [1500.0, 0.6]])
    piece("asha", 30, [[200.0, 0.45], [450.0, 0.6]])
    table = tta.report(["demo"], tmp_path / "results", tmp_path)
    assert "| random | 0 | 0 | — | 600 |" in table and "| random | 0 | 0 | — | 1800 |" in table
    assert "ASHA (seed 0, 1800 s) reaches random search's final best (0.600): 450 s = 0.25 of its budget" in table


def test_time_to_accuracy_variant_runs_another_split_and_size_under_its_own_names(tmp_path):
    """A piece on another split or input size gets its own study, folders and result file, and the report reads
    the split and size back from the kept command line (older results: the data set's own)."""
    from benchmarks import time_to_accuracy as tta

    variant = tta.Variant(split_seed=2, image_size=224)
    ov = tta.overrides("random", "discogs", 1, 600, tmp_path, smoke=False, variant=variant)
    assert [o for o in ov if o.startswith("data.image_size=")] == ["data.image_size=224"]
    assert "data.split_seed=2" in ov and "hydra.sweeper.study_name=tta-random-s1-split2-224px" in ov
    assert f"hydra.sweep.dir={tmp_path}/multirun/random-s1-split2-224px" in ov
    own = tta.overrides("random", "discogs", 1, 600, tmp_path, smoke=False)
    assert not any(o.startswith("data.split_seed=") for o in own) and "data.image_size=128" in own
    assert tta.result_name("random", 1, 10, variant) == "random-s1-split2-224px-10min.json"
    assert tta.result_name("random", 1, 10) == "random-s1-10min.json"
    assert tta.recorded_variant({"command": "python experiments/run.py " + " ".join(ov)}) == (2, 224)
    assert tta.recorded_variant({"command": "python experiments/run.py " + " ".join(own)}) == (0, 128)
    assert tta.recorded_variant({"command": "python experiments/run.py seed=0"}) == (0, None)


def test_time_to_accuracy_compares_strategies_with_the_default_on_the_same_splits():
    """Across splits: a strategy's mean test accuracy and its paired difference from the default run of the same
    splits (the t-test's p by hand: differences 0.1, 0.2, 0.0 have mean 0.1 and standard error 0.1/sqrt(3))."""
    from scipy.stats import t

    from benchmarks import time_to_accuracy as tta

    def record(strategy: str, split: int, test: float) -> dict:
        cmd = "python experiments/run.py data.image_size=128" + (f" data.split_seed={split}" if split else "")
        return {"strategy": strategy, "seed": 0, "budget_s": 600.0, "test_acc": test, "command": cmd}

    results = [record("default", k, v) for k, v in enumerate([0.3, 0.3, 0.4, 0.5])]
    results += [record("random", k, v) for k, v in enumerate([0.4, 0.5, 0.4])]  # split 3 not run
    results += [record("asha", 0, 0.6)]  # one split: no row
    rows = tta.across_splits(results)
    p = 2 * t.sf(0.1 / (0.1 / 3**0.5), df=2)
    assert rows[3:] == [
        "| default | 0 | 128 | 600 | 0,1,2,3 | 0.375 | — | — | — |",
        f"| random | 0 | 128 | 600 | 0,1,2 | 0.433 | +0.100 | 2 of 3 | {p:.3f} |",
    ]
    # results whose command names no input size (None) sort beside those that do
    unsized = [
        {**r, "command": "python experiments/run.py" + r["command"].split("data.image_size=128")[1]} for r in results
    ]
    assert tta.across_splits(results + unsized)[3:5] == [
        "| default | 0 | — | 600 | 0,1,2,3 | 0.375 | — | — | — |",
        f"| random | 0 | — | 600 | 0,1,2 | 0.433 | +0.100 | 2 of 3 | {p:.3f} |",
    ]
    # the same random searches promoted as a top-3 ensemble with TTA: their own row, paired with the default alike
    # (differences 0.2, 0.3, 0.1: mean 0.2, standard error 0.1/sqrt(3))
    tests = zip(results[4:7], [0.5, 0.6, 0.5], strict=True)
    composed = [{**r, "composed": {"label": "top3+tta", "test_acc": v}} for r, v in tests]
    p = 2 * t.sf(0.2 / (0.1 / 3**0.5), df=2)
    assert tta.across_splits(results[:4] + composed)[3:] == [
        "| default | 0 | 128 | 600 | 0,1,2,3 | 0.375 | — | — | — |",
        f"| random | 0 | 128 | 600 | 0,1,2 | 0.433 | +0.100 | 2 of 3 | {2 * t.sf(0.1 / (0.1 / 3**0.5), df=2):.3f} |",
        f"| random top3+tta | 0 | 128 | 600 | 0,1,2 | 0.533 | +0.200 | 3 of 3 | {p:.3f} |",
    ]
