"""After a real tiny sweep: promotion, the registry and its champion alias, predict and similar from the registry."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from covers.__main__ import main
from covers.data import prepare_data
from covers.data.loaders import create_loader
from covers.data.transforms import create_eval_transform
from covers.models.create import create_model
from covers.serving.cover_model import CoverModel, read_image
from covers.serving.ensemble import Composition, log_composition
from covers.serving.promote import champion_accuracy, promote
from covers.tracking import registry
from covers.tracking.registry import Candidate, decide, rank_candidates
from covers.training.intervals import wilson_interval
from covers.training.loop import predict
from covers.training.runtime import create_runtime
from tests.conftest import ROOT
from tests.test_sweep import run_sweep

NAME = "covers-demo"  # promote.model_name defaults to covers-<data set>


def _uri(root: Path) -> str:
    return f"sqlite:///{root}/mlruns/mlflow.db"


@pytest.fixture(scope="module")
def store(tmp_path_factory, cache_dir) -> dict:
    """A fine-tuning sweep (study ``ft``) promoted with ``python experiments/promote.py``."""
    root = tmp_path_factory.mktemp("store")
    # trained long enough to pass the promotion gate (better than chance, not worse than the kNN baseline)
    run_sweep(
        root,
        cache_dir,
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.study_name=ft",
        "trainer.epochs=range(3,4)",
        "optim.lr=0.003",
        "freeze.n_frozen=0",
    )
    cmd = [
        sys.executable,
        "experiments/promote.py",
        f"paths.root_dir={root}",
        f"paths.cache_dir={cache_dir}",
        f"hydra.run.dir={root}/promote",
        "trainer.device=cpu",
        "promote.baseline=none",  # the gate against chance only; the kNN baseline: test_gate_against_the_knn_...
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]
    client = mlflow.MlflowClient(tracking_uri=_uri(root))
    return {
        "root": root,
        "client": client,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        "demo": cache_dir / "demo-v1-20x96px-seed0",
    }


def _trials(client, study: str) -> list:
    exp = client.get_experiment_by_name("covers")
    (parent,) = client.search_runs([exp.experiment_id], f"tags.`covers.kind` = 'sweep' and tags.study_name = '{study}'")
    query = f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.`covers.kind` = 'trial'"  # not ensembles
    return client.search_runs([exp.experiment_id], query)


def _manifest(client, run, dest: Path) -> pd.DataFrame:
    meta = json.loads(Path(client.download_artifacts(run.info.run_id, "model/meta.json", str(dest))).read_text())
    return pd.read_csv(client.download_artifacts(run.info.run_id, meta["manifest_file"], str(dest)), dtype=str)


def _png_bytes(demo: Path, rows: pd.DataFrame) -> list[bytes]:
    out = []
    for archive, member in zip(rows["archive"], rows["member"], strict=True):
        with zipfile.ZipFile(demo / archive) as zf:
            out.append(zf.read(member))
    return out


def test_promote_picks_best_trial_and_tests_it_on_the_manifest_test_rows(store, tmp_path):
    client = store["client"]
    trials = _trials(client, "ft")
    best_acc = max(r.data.metrics["summary/best_val_acc"] for r in trials)
    mv = client.get_model_version_by_alias(NAME, "champion")
    run = client.get_run(mv.run_id)
    assert run.data.tags["study_name"] == "ft" and run.data.metrics["summary/best_val_acc"] == best_acc
    assert f"candidate v{mv.version} (run {run.info.run_id})" in store["stdout"]
    assert "champion before: none" in store["stdout"] and f"v{mv.version} holds @champion" in store["stdout"]
    assert "gate: passed: test_acc" in store["stdout"] and "significantly above chance 0.125" in store["stdout"]
    assert "(95 % CI " in store["stdout"]
    terminal = store["stdout"] + store["stderr"]
    assert terminal.count("decision:") == 1, "the decision is shown once"
    assert "Downloading artifacts" not in terminal, "no MLflow download progress bars"

    manifest = _manifest(client, run, tmp_path)
    test_rows = manifest[manifest["split"] == "test"][["archive", "member", "label"]].reset_index(drop=True)
    preds = pd.read_csv(client.download_artifacts(run.info.run_id, "test/predictions.csv", str(tmp_path)), dtype=str)
    assert preds[["archive", "member"]].equals(test_rows[["archive", "member"]])
    assert (preds["genre"] == test_rows["label"]).all()
    test_acc = float((preds["predicted"] == preds["genre"]).mean())
    metrics = run.data.metrics
    assert metrics["test_acc"] == pytest.approx(test_acc) and metrics["test_n_images"] == len(test_rows)
    assert {"test_balanced_acc", "test_macro_f1", "test_f1.Rock", "test_precision.Jazz", "test_recall.Blues"} <= set(
        metrics
    )
    assert "plots/test_confusion_matrix.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert float(mv.tags["test_acc"]) == pytest.approx(test_acc)
    assert run.data.params["data.manifest_hash"] in mv.description and "optim:" in mv.description
    assert mv.tags["promotion.promoted"] == "True"
    assert mv.tags["gate.passed"] == "True" and float(mv.tags["gate.candidate_acc"]) == pytest.approx(test_acc)
    assert json.loads(mv.tags["classes"]) == sorted(test_rows["label"].unique().tolist())
    low, high = wilson_interval(int((preds["predicted"] == preds["genre"]).sum()), len(preds))
    assert (metrics["test_acc_ci_low"], metrics["test_acc_ci_high"]) == pytest.approx((low, high))
    assert metrics["test_balanced_acc_ci_low"] <= metrics["test_balanced_acc"] <= metrics["test_balanced_acc_ci_high"]


def test_gate_against_the_knn_baseline_on_the_same_covers(store, cache_dir, tmp_path):
    """The champion's run again, for another alias, with the kNN baseline: paired on the same test covers, refused
    when below it (force overrides), passed otherwise; the numbers are tags on the version."""
    client = store["client"]
    mv = client.get_model_version_by_alias(NAME, "champion")
    kw = {"tracking_uri": _uri(store["root"]), "experiment": "covers", "cache_dir": str(cache_dir), "device": "cpu"}
    rec = promote(run_id=mv.run_id, alias="staging", **kw)
    gate = rec["gate"]
    assert rec["candidate_version"] == mv.version and gate["n"] == 16 and gate["baseline_acc"] is not None
    n_right = round(gate["candidate_acc"] * 16)
    assert gate["candidate_only"] - gate["baseline_only"] == n_right - round(gate["baseline_acc"] * 16), "paired"
    tags = client.get_model_version(NAME, mv.version).tags
    assert float(tags["gate.baseline_acc"]) == pytest.approx(gate["baseline_acc"]) and "gate.mcnemar_p" in tags
    if gate["candidate_acc"] < gate["baseline_acc"]:
        assert not rec["promoted"] and "below the kNN baseline's" in rec["reason"] and tags["gate.passed"] == "False"
        assert registry.alias_version(client, NAME, "staging") is None
        forced = promote(run_id=mv.run_id, alias="staging", force=True, **kw)
        assert forced["promoted"] and forced["forced"] and forced["reason"].startswith("forced although the gate")
    else:
        assert rec["promoted"] and "the kNN baseline's" in rec["reason"] and "gate passed" in rec["reason"]
    assert client.get_model_version_by_alias(NAME, "staging").version == mv.version


def test_a_champion_of_other_genres_is_not_compared(store, cache_dir, capsys):
    """A version that predicts other classes keeps the alias, with the reason; the predict CLI without --model
    finds the newest covers-* champion."""
    client = store["client"]
    champion = client.get_model_version_by_alias(NAME, "champion")
    other = next(r for r in _trials(client, "ft") if r.info.run_id != champion.run_id)
    client.set_model_version_tag(NAME, champion.version, "classes", json.dumps(["airplane", "cat"]))
    try:
        kw = {"tracking_uri": _uri(store["root"]), "experiment": "covers", "cache_dir": str(cache_dir)}
        rec = promote(run_id=other.info.run_id, baseline="none", device="cpu", **kw)
    finally:
        client.set_model_version_tag(NAME, champion.version, "classes", champion.tags["classes"])
    assert rec["model_name"] == NAME and rec["champion_basis"] == "label sets differ" and not rec["promoted"]
    assert "the label sets differ: v" in rec["reason"] and "['airplane', 'cat']" in rec["reason"]
    assert rec["champion_test_acc"] is None, "not measured on covers of other genres"
    assert client.get_model_version_by_alias(NAME, "champion").version == champion.version

    cover = store["demo"] / "Jazz.zip"
    assert main(["predict", str(cover), "--json", "--tracking-uri", _uri(store["root"])]) == 0
    assert f"model: models:/{NAME}@champion" in capsys.readouterr().err


def test_registry_model_predicts_like_the_in_process_model(store, tmp_path):
    client = store["client"]
    mv = client.get_model_version_by_alias(NAME, "champion")
    local = Path(client.download_artifacts(mv.run_id, "model", str(tmp_path)))
    meta = json.loads((local / "meta.json").read_text())
    net = create_model(meta["model_name"], meta["num_classes"], weights="none")
    net.load_state_dict(torch.load(local / "state_dict.pt", weights_only=True))
    bundle = prepare_data("demo", meta["image_size"], store["demo"].parent, demo={"per_class": 20})
    assert bundle.manifest_hash == meta["manifest_hash"]
    images, labels = bundle.split("test")
    transform = create_eval_transform(meta["image_size"])
    loader = create_loader(images, labels, transform, 64, False, mean=meta["mean"], std=meta["std"])
    logits, _ = predict(net, loader, create_runtime("cpu", "fp32"))
    expected = [meta["classes"][i] for i in logits.argmax(1)]

    mlflow.set_tracking_uri(_uri(store["root"]))
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    raw = _png_bytes(store["demo"], bundle.manifest[bundle.manifest["split"] == "test"])
    from_bytes = model.predict(raw)
    assert [r["genre"] for r in from_bytes] == expected
    arrays = [np.asarray(read_image(b)) for b in raw]
    paths = []
    for i, b in enumerate(raw[:3]):
        (tmp_path / f"c{i}.png").write_bytes(b)
        paths.append(str(tmp_path / f"c{i}.png"))
    assert [r["genre"] for r in model.predict(arrays)] == expected
    assert [r["genre"] for r in model.predict(paths)] == expected[:3]
    probs = np.array([list(r["probabilities"].values()) for r in from_bytes])
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)

    # a champion recorded on another manifest is measured on this test split: here it must reproduce its record
    elsewhere = SimpleNamespace(name=NAME, version=mv.version, tags={"manifest_hash": "another", "test_acc": "0"})
    acc, basis = champion_accuracy(elsewhere, bundle)
    assert acc == pytest.approx(float(mv.tags["test_acc"])) and basis == "measured now on this test split"


@pytest.mark.slow
def test_worse_promotion_keeps_the_alias_and_a_forced_one_moves_it(store, cache_dir):
    """A kNN model (swept through run.py) is promoted against the fine-tuned champion. Its backbone is untrained
    (``model.weights=none``), so that on 16 test covers it is worse than the champion on any machine, not tied."""
    root, client = store["root"], store["client"]
    sweep = ["experiment=knn", "model.weights=none", "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=knn"]
    run_sweep(root, cache_dir, *sweep)
    knn_trials = _trials(client, "knn")
    ft_trials = _trials(client, "ft")
    assert {r.info.experiment_id for r in knn_trials} == {r.info.experiment_id for r in ft_trials}
    assert {r.data.tags["model.kind"] for r in knn_trials} == {"knn"}

    kw = {"tracking_uri": _uri(root), "experiment": "covers", "cache_dir": str(cache_dir), "device": "cpu"}
    ft_version = client.get_model_version_by_alias(NAME, "champion").version
    knn_rec = promote(study_name="knn", **kw)
    ft_acc, knn_acc = float(client.get_model_version(NAME, ft_version).tags["test_acc"]), knn_rec["candidate_test_acc"]
    assert knn_acc != pytest.approx(ft_acc), "equal test accuracies cannot show the rule; change the sweep seed"
    knn_version = knn_rec["candidate_version"]
    if knn_acc < ft_acc:  # the kNN model is the worse one
        worse, worse_study, better = knn_version, "knn", ft_version
        assert not knn_rec["promoted"]
    else:  # the fine-tuned champion is the worse one: promote it again against the kNN champion
        assert knn_rec["promoted"] and knn_rec["champion_test_acc"] == pytest.approx(ft_acc)
        worse, worse_study, better = ft_version, "ft", knn_version
        rec = promote(study_name="ft", **kw)
        assert rec["candidate_version"] == ft_version and not rec["promoted"]
    assert client.get_model_version_by_alias(NAME, "champion").version == better
    forced = promote(study_name=worse_study, force=True, **kw)
    assert forced["promoted"] and forced["forced"] and forced["candidate_version"] == worse
    assert client.get_model_version_by_alias(NAME, "champion").version == worse
    for v in (ft_version, knn_version):  # evaluated on the test split once, however often promoted
        assert len(client.get_metric_history(client.get_model_version(NAME, v).run_id, "test_acc")) == 1


def test_predict_cli_reports_a_corrupt_file_and_predicts_the_others(store, tmp_path):
    folder = tmp_path / "covers"
    folder.mkdir()
    with zipfile.ZipFile(store["demo"] / "Jazz.zip") as zf:
        for name in zf.namelist()[:4]:
            (folder / Path(name).name).write_bytes(zf.read(name))
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not a cover")
    cmd = [sys.executable, "-m", "covers", "predict", str(folder), "--json", "--top-k", "2"]
    cmd += ["--model", f"models:/{NAME}/1", "--tracking-uri", _uri(store["root"])]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    results = {Path(r["file"]).name: r for r in json.loads(proc.stdout)}
    assert sorted(results) == sorted(["corrupt.png", *(p.name for p in folder.glob("jazz_*.png"))])
    assert "cannot decode" in results.pop("corrupt.png")["error"]
    assert f"error: {folder / 'corrupt.png'}: cannot decode" in proc.stderr
    for r in results.values():
        assert r["error"] is None and len(r["predictions"]) == 2
        assert r["predictions"][0]["probability"] >= r["predictions"][1]["probability"]


def _similar(store, tmp_path, capsys, *flags: str) -> tuple[pd.Series, dict]:
    """``python -m covers similar`` on a training cover of the model's gallery: the cover and the JSON output."""
    client = store["client"]
    mv = client.get_model_version(NAME, "1")
    manifest = _manifest(client, client.get_run(mv.run_id), tmp_path)
    cover = manifest[manifest["split"] == "train"].iloc[5]
    spec = f"{store['demo'] / cover['archive']}:{cover['member']}"
    argv = ["similar", spec, "-k", "5", "--json", "--model", f"models:/{NAME}/1", "--tracking-uri", _uri(store["root"])]
    assert main([*argv, *flags]) == 0
    return cover, json.loads(capsys.readouterr().out)


def test_similar_leaves_a_training_cover_itself_out_of_its_neighbours_and_vote(store, tmp_path, capsys):
    cover, out = _similar(store, tmp_path, capsys)
    assert (cover["archive"], cover["member"]) not in {(n["archive"], n["member"]) for n in out["neighbours"]}
    assert len(out["neighbours"]) == 5 and sum(out["votes"].values()) == 5 and out["genre"] in out["votes"]
    sims = [n["similarity"] for n in out["neighbours"]]
    assert sims == sorted(sims, reverse=True) and sims[0] < 1 - 1e-4


def test_similar_keep_self_finds_a_training_cover_itself_first(store, tmp_path, capsys):
    cover, out = _similar(store, tmp_path, capsys, "--keep-self")
    first = out["neighbours"][0]
    assert (first["archive"], first["member"], first["genre"]) == (cover["archive"], cover["member"], cover["label"])
    assert first["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert len(out["neighbours"]) == 5 and sum(out["votes"].values()) == 5 and out["genre"] in out["votes"]


# (best_val_acc, val_loss, start_time, run_id) -> the first one wins
RANKING = [
    ([Candidate(0.5, 1.0, 1, "a"), Candidate(0.6, 2.0, 2, "b")], "b"),
    ([Candidate(0.6, 1.5, 1, "a"), Candidate(0.6, 1.0, 2, "b")], "b"),
    ([Candidate(0.6, 1.0, 2, "a"), Candidate(0.6, 1.0, 1, "b")], "b"),
]


@pytest.mark.parametrize(("candidates", "winner"), RANKING)
def test_rank_candidates(candidates, winner):
    assert rank_candidates(candidates)[0].run_id == winner


@pytest.mark.parametrize(
    ("candidate", "champion", "force", "promoted"),
    [(0.5, None, False, True), (0.5, 0.5, False, True), (0.4, 0.5, False, False), (0.4, 0.5, True, True)],
)
def test_decide(candidate, champion, force, promoted):
    assert decide(candidate, champion, force).promote is promoted


def test_promote_tries_an_ensemble_and_tta_and_adopts_only_what_beats_the_single_model(store, cache_dir):
    client = store["client"]
    kw = {"tracking_uri": _uri(store["root"]), "experiment": "covers", "cache_dir": str(cache_dir), "device": "cpu"}
    rec = promote(study_name="ft", ensemble={"top_k": 2}, tta=True, alias="composed", baseline="none", **kw)
    comp = rec["composition"]
    assert set(comp["val_acc"]) == {"single", "ensemble", "tta"} and all(v > 0 for v in comp["latency_ms"].values())
    acc, held = comp["val_acc"], comp["held_out"]
    assert set(held) == {"single", "ensemble"} and held["ensemble"] == pytest.approx(acc["ensemble"])
    assert ("ensemble" in comp["adopted"]) == (acc["ensemble"] > acc["single"] or held["ensemble"] > held["single"])
    assert ("tta" in comp["adopted"]) == (acc["tta"] > acc["ensemble" if "ensemble" in comp["adopted"] else "single"])
    run = client.get_run(rec["candidate_run_id"])
    best = client.get_run(client.get_model_version(NAME, "1").run_id)  # the fixture's promotion: the best trial
    if comp["adopted"]:
        assert (
            run.data.tags["covers.kind"] == "ensemble"
            and run.data.tags["mlflow.parentRunId"] == best.data.tags["mlflow.parentRunId"]
        )
        assert run.data.params["ensemble.members"].split(",")[0] == best.info.run_id
        registered = comp["adopted"][-1]  # the model registered: the last composition adopted
        assert run.data.metrics["summary/best_val_acc"] == pytest.approx(acc[registered])
    else:
        assert run.info.run_id == best.info.run_id, "nothing adopted: the single best trial is the candidate"


def test_a_registered_ensemble_predicts_the_mean_through_the_cli(store, cache_dir, tmp_path, capsys):
    """An ensemble of the sweep's two trials (with TTA), logged and promoted as promote logs an adopted one, then
    predicted from the registry by ``python -m covers predict``."""
    client = store["client"]
    trials = _trials(client, "ft")
    models = [
        CoverModel.from_dir(client.download_artifacts(r.info.run_id, "model", str(tmp_path / r.info.run_id)), "cpu")
        for r in trials
    ]
    composed = replace(
        models[0],
        meta={**models[0].meta, "ensemble": [{"run_id": trials[1].info.run_id}], "tta": ["identity", "hflip"]},
        members=[models[1].net],
    )
    comp = Composition(
        composed,
        trials,
        ["ensemble", "tta"],
        {"single": 0.5, "ensemble": 0.6, "tta": 0.7},
        {"single": 1.0, "ensemble": 2.0, "tta": 4.0},
    )
    files = tmp_path / "best-files"
    for sub in ("config", "data"):
        client.download_artifacts(trials[0].info.run_id, sub, str(files))
    run = log_composition(client, comp, files, tmp_path)
    assert log_composition(client, comp, files, tmp_path).info.run_id == run.info.run_id, "the same composition: reused"
    kw = {"tracking_uri": _uri(store["root"]), "experiment": "covers", "cache_dir": str(cache_dir), "device": "cpu"}
    rec = promote(run_id=run.info.run_id, alias="ensemble", baseline="none", force=True, **kw)
    version = rec["candidate_version"]

    folder = tmp_path / "covers"
    folder.mkdir()
    with zipfile.ZipFile(store["demo"] / "Rock.zip") as zf:
        for name in zf.namelist()[:3]:
            (folder / Path(name).name).write_bytes(zf.read(name))
    argv = ["predict", str(folder), "--json", "--top-k", "8", "--model", f"models:/{NAME}/{version}"]
    assert main([*argv, "--tracking-uri", _uri(store["root"])]) == 0  # python -m covers predict, in process
    images, _ = models[0].prepare(sorted(str(p) for p in folder.iterdir()))
    expected = np.mean([m.predict_proba(images[:, :, ::-1]) + m.predict_proba(images) for m in models], axis=0) / 2
    for row, probs in zip(sorted(json.loads(capsys.readouterr().out), key=lambda r: r["file"]), expected, strict=True):
        got = {p["genre"]: p["probability"] for p in row["predictions"]}
        assert [got[c] for c in models[0].classes] == pytest.approx(probs, abs=1e-5)
