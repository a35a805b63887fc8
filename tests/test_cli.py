"""The apps as a user meets them in a terminal: ``--help``, mistakes reported in a few lines, where results went."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT


def _run(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env)


def _outputs(tmp_path: Path) -> list[str]:
    """Overrides that keep a run's MLflow store, caches and Hydra folder in ``tmp_path``."""
    return [f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path}/run"]


# (app, words of its description, an example command in its help)
HELP = [
    ("experiments/run.py", "fine-tunes an ImageNet-pretrained timm", "python experiments/run.py -m"),
    ("experiments/audit.py", "audits a data source", "python experiments/audit.py data=archives data.source="),
    ("experiments/promote.py", "promotes the best trial", "python experiments/promote.py promote.study_name="),
]


@pytest.mark.parametrize(("app", "description", "example"), HELP, ids=[Path(a).stem for a, _, _ in HELP])
def test_help_describes_the_app_its_groups_and_an_example(app, description, example):
    proc = _run(app, "--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert description in out and example in out, out
    assert (
        "== Config groups ==" in out
        and "data: archives, base, demo" in out
        and "hparams_search: curve, default," in out
    )
    assert "--cfg,-c" in out, "Hydra's flags are listed"
    assert "is powered by Hydra" not in out, "not Hydra's generic header"


def test_help_of_the_command_line_tool_documents_path_without_markup():
    helps = {}
    for sub in ("", "predict", "similar"):
        proc = _run("-m", "covers", *sub.split(), "--help")
        assert proc.returncode == 0, proc.stderr
        assert "``" not in proc.stdout, proc.stdout
        helps[sub] = proc.stdout
    top, predict = helps[""], helps["predict"]
    assert "python -m covers predict PATH" in top and "python -m covers similar COVER" in top
    flat = " ".join(predict.split())
    assert "PATH an image file, a folder" in flat and "zip" in flat, predict


def _last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


def _assert_compact(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr
    report = proc.stderr[proc.stderr.index("Error executing job") :]  # before it: e.g. a new MLflow store's lines
    message = [line for line in report.splitlines()[1:] if line.strip() and "HYDRA_FULL_ERROR" not in line]
    assert len(message) <= 3, proc.stderr
    assert all(w in proc.stderr for w in words), proc.stderr


def test_audit_without_a_source_says_what_to_pass(tmp_path):
    proc = _run("experiments/audit.py", "data=archives", *_outputs(tmp_path))
    _assert_compact(proc, "data.source is not set", "data.source=", "<Genre>.zip")


def test_audit_of_a_missing_folder_names_it_and_full_error_keeps_the_trace(tmp_path):
    missing = tmp_path / "no" / "such" / "dir"
    proc = _run("experiments/audit.py", "data=archives", f"data.source={missing}", *_outputs(tmp_path))
    _assert_compact(proc, f"data.source={missing} is not a directory", "<Genre>.zip")
    full = _run(
        "experiments/audit.py",
        "data=archives",
        f"data.source={missing}",
        *_outputs(tmp_path),
        env={"HYDRA_FULL_ERROR": "1"},
    )
    assert full.returncode == 1 and "Traceback" in full.stderr and "DataSourceNotFound" in full.stderr


def test_a_single_run_on_a_missing_folder_says_what_to_pass(tmp_path):
    cmd = ["experiments/run.py", "data=archives", "data.source=/no/such/dir", "trainer.epochs=1", "trainer.device=cpu"]
    proc = _run(*cmd, *_outputs(tmp_path))
    _assert_compact(proc, "data.source=/no/such/dir is not a directory", "<Genre>.zip")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "message"),
    [(["kind=nope"], "kind='nope'; choose one of finetune, knn, lr_find"), (["model=knn"], "use kind=knn or")],
)
def test_a_wrong_run_kind_says_which_kinds_there_are(tmp_path, overrides, message):
    proc = _run("experiments/run.py", *overrides, "trainer.device=cpu", *_outputs(tmp_path))
    _assert_compact(proc, message)


def _genre_zip(folder: Path, genre: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(folder / f"{genre}.zip", "w") as zf:
        for i in range(n):
            png = folder / "tmp.png"
            Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(png)
            zf.write(png, f"{genre}/{i}.png")
    (folder / "tmp.png").unlink()


def test_audit_ends_naming_the_report_and_the_mlflow_run(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for k, genre in enumerate(("Jazz", "Rock", "Soul")):
        _genre_zip(src, genre, 10, seed=10 * k)
    out = tmp_path / "out"
    proc = _run("experiments/audit.py", "data=archives", f"data.source={src}", f"audit.out={out}", *_outputs(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = _last_line(proc.stdout)
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert str(out / "report.md") in last and f"mlflow ui --backend-store-uri {uri}" in last, proc.stdout[-2000:]
    client = mlflow.MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("audit").experiment_id])
    assert f"MLflow run {run.info.run_id}" in last
