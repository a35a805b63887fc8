"""What people see: a real sweep in the MLflow UI, driven in Debian's Chromium through Playwright, and in
optuna-dashboard. Screenshots go to ``test-artifacts/ui/`` (git-ignored)."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import mlflow
import optuna
import pytest
from PIL import Image

from tests.conftest import TEST_ARTIFACTS, run_sweep, skip_or_fail
from tests.servers import HOST, free_port, get_json, mlflow_server, serve

try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # the browser fixture skips (fails in CI)
    sync_playwright = None

pytestmark = pytest.mark.slow

STUDY, TRIALS, EPOCHS = "ui", 3, 2
SEARCHED = {"optim.lr", "loss.gamma", "freeze.n_frozen"}  # the default search space without trainer.epochs
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = TEST_ARTIFACTS / "ui"
TIMEOUT_MS = 90_000  # a React app on two busy cores


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory, cache_dir) -> Path:
    """A finished 3-trial, 2-epoch sweep (no pruning, so every trial has every epoch)."""
    root = tmp_path_factory.mktemp("ui-sweep")
    run_sweep(
        root,
        cache_dir,
        f"hydra.sweeper.n_trials={TRIALS}",
        f"hydra.sweeper.study_name={STUDY}",
        f"trainer.epochs={EPOCHS}",
        "hydra/sweeper/pruner=none",
    )
    return root


@pytest.fixture(scope="module")
def mlflow_url(sweep_dir: Path) -> Iterator[str]:
    """``mlflow server`` on the sweep's SQLite store and artifact root."""
    mlruns = sweep_dir / "mlruns"
    with mlflow_server(f"sqlite:///{mlruns}/mlflow.db", mlruns / "artifacts", sweep_dir / "mlflow-server.log") as url:
        yield url


@pytest.fixture(scope="module")
def runs(mlflow_url: str) -> SimpleNamespace:
    """The sweep's parent run and its trial runs (by trial number), read through the server's REST API."""
    client = mlflow.MlflowClient(tracking_uri=mlflow_url)
    exp = client.get_experiment_by_name("covers")
    found = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in found if r.data.tags.get("covers.kind") == "sweep"]
    trials = sorted((r for r in found if r.data.tags.get("covers.kind") == "trial"), key=_trial_number)
    return SimpleNamespace(client=client, experiment=exp, parent=parent, trials=trials)


def _trial_number(run) -> int:
    return int(run.data.tags["trial_number"])


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium, headless (no browser download); Playwright gives it a fresh temporary --user-data-dir."""
    if sync_playwright is None:
        skip_or_fail("playwright is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        skip_or_fail(f"{CHROMIUM} is missing (apt-get install chromium)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, request) -> Iterator[Page]:
    """A tab in a new browser context (no state from other tests); its last view is saved as
    ``test-artifacts/ui/<test>-end.png``."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    yield tab
    tab.screenshot(path=SHOTS / f"{request.node.name}-end.png")
    context.close()


def open_experiment(page: Page, url: str) -> None:
    """Experiments list → *Model training* (MLflow 3 opens in GenAI mode) → experiment ``covers``."""
    page.goto(f"{url}/#/experiments")
    page.get_by_text("Model training", exact=True).click()
    page.get_by_role("link", name="covers", exact=True).click()
    expect(page.get_by_text("matching runs")).to_be_visible()
    close_button = page.locator("[data-component-id='mlflow.assistant.chat_panel.close']")
    if close_button.is_visible():  # the assistant side panel only takes room
        close_button.click()


def run_row(page: Page, name: str):
    """The runs table's row of the run called ``name``."""
    return page.get_by_role("row").filter(has=page.get_by_role("link", name=name, exact=True))


def expand(page: Page, parent_name: str) -> None:
    """Press the +/− button beside the parent run's name to show its nested runs."""
    name_cell = run_row(page, parent_name).get_by_role("gridcell").filter(has_text=parent_name)
    name_cell.get_by_role("button").click()


def test_rest_api_names_metrics_params_artifacts(mlflow_url, runs):
    parent, trials = runs.parent, runs.trials
    assert re.fullmatch(rf"sweep {STUDY} \(\d{{4}}-\d\d-\d\d \d\d:\d\d\)", parent.info.run_name)
    assert [_trial_number(r) for r in trials] == list(range(TRIALS))
    for run in trials:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert re.fullmatch(
            rf"trial-{_trial_number(run)} lr=\d\.\de-\d\d ep={EPOCHS} γ=[\d.e+-]+ frozen=\d", run.info.run_name
        )
        query = {"run_id": run.info.run_id, "metric_key": "epoch/val_acc"}
        history = get_json(f"{mlflow_url}/api/2.0/mlflow/metrics/get-history", query)["metrics"]
        assert [m["step"] for m in history] == list(range(1, EPOCHS + 1))
        assert max(m["value"] for m in history) == pytest.approx(run.data.metrics["summary/best_val_acc"])
        curves = {f"epoch/{k}" for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr")}
        assert curves | {"summary/best_val_acc"} <= set(run.data.metrics)
        # params by config group; no machine-specific folders that differ per trial
        assert {"model.name", "loss.gamma", "optim.lr", "freeze.n_frozen", "trainer.epochs"} <= set(run.data.params)
        sweeper_set = [k for k in run.data.params if k.startswith(("paths.", "audit.", "hydra.", "trial."))]
        assert sweeper_set == ["trial.repeats"], "of trial.*, only the user's repeats setting is a param"
        folders = {a.path for a in runs.client.list_artifacts(run.info.run_id)}
        assert folders == {"config", "data", "plots", "model"}


def test_experiment_shows_sweep_with_nested_trials(page, mlflow_url, runs):
    open_experiment(page, mlflow_url)
    trial_links = page.get_by_role("link", name=re.compile(r"^trial-\d+ lr="))
    expect(run_row(page, runs.parent.info.run_name)).to_be_visible()
    expect(trial_links).to_have_count(0)  # collapsed under the parent
    page.screenshot(path=SHOTS / "1-experiment-collapsed.png")
    expand(page, runs.parent.info.run_name)
    expect(trial_links).to_have_count(TRIALS)
    assert sorted(trial_links.all_inner_texts()) == sorted(r.info.run_name for r in runs.trials)
    page.screenshot(path=SHOTS / "2-experiment-expanded.png")


def test_trial_page_shows_val_acc_per_epoch_and_learning_curves(page, mlflow_url, runs, tmp_path):
    trial = runs.trials[0]
    open_experiment(page, mlflow_url)
    expand(page, runs.parent.info.run_name)
    page.get_by_role("link", name=trial.info.run_name, exact=True).click()
    expect(page.get_by_role("heading", name=trial.info.run_name)).to_be_visible()

    page.get_by_role("tab", name="Model metrics").click()
    # the page opens on the per-epoch curves (section "epoch"), the single values (section "summary") below them
    cards = page.get_by_test_id("experiment-view-compare-runs-card")
    expect(cards.first.locator("h4")).to_have_attribute("title", re.compile(r"^epoch/"))
    expect(cards.first.locator(".js-plotly-plot g.points path.point")).to_have_count(EPOCHS)  # a curve, no bar
    page.screenshot(path=SHOTS / "3-trial-metrics.png")
    page.get_by_placeholder("Search metric charts").fill("val_acc")
    chart = cards.filter(has=page.locator("h4[title='epoch/val_acc']"))
    expect(chart.locator(".js-plotly-plot g.points path.point")).to_have_count(EPOCHS)  # one marker per epoch
    page.screenshot(path=SHOTS / "3-trial-val_acc.png")

    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text("plots", exact=True).click()
    page.get_by_text("learning_curves.png", exact=True).click()
    image = page.get_by_role("img", name="plots/learning_curves.png")
    expect(image).to_be_visible()
    shown_width = image.evaluate("img => img.decode().then(() => img.naturalWidth)")
    png = runs.client.download_artifacts(trial.info.run_id, "plots/learning_curves.png", str(tmp_path))
    assert shown_width == Image.open(png).width > 0
    page.screenshot(path=SHOTS / "4-trial-learning-curves.png")


def test_compare_view_of_two_trials(page, mlflow_url, runs):
    first, second = runs.trials[:2]
    open_experiment(page, mlflow_url)
    expand(page, runs.parent.info.run_name)
    for run in (first, second):
        run_row(page, run.info.run_name).get_by_role("checkbox").check()
    page.get_by_role("button", name="Compare").click()

    expect(page.get_by_text("Comparing 2 Runs from 1 Experiment")).to_be_visible()
    for run in (first, second):
        expect(page.get_by_role("cell", name=run.info.run_name, exact=True)).to_be_visible()
    # the parallel-coordinates plot starts with (up to 3 of) the params that differ: the searched ones
    differ = sorted(k for k in SEARCHED if first.data.params[k] != second.data.params[k])
    axes = page.locator(".js-plotly-plot text.axis-title")
    expect(axes).to_have_count(min(3, len(differ)) + 1)
    assert axes.all_text_contents()[:-1] == differ[:3]
    # ... coloured by the first metric logged: the per-epoch validation accuracy
    assert axes.all_text_contents()[-1] == "epoch/val_acc"
    page.screenshot(path=SHOTS / "5-compare.png", full_page=True)

    # the two clicks the README describes: a fourth parameter (MLflow shows 3) and the objective
    params_box, metrics_box = page.get_by_role("combobox").nth(0), page.get_by_role("combobox").nth(1)
    params_box.click()
    page.keyboard.type("trainer.epochs")
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    metrics_box.click()
    page.keyboard.type("summary/best_val_acc")
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    expect(axes).to_have_count(min(3, len(differ)) + 3)  # (the SVG's text order is not the axes' order)
    assert sorted(axes.all_text_contents()) == sorted(
        [*differ[:3], "trainer.epochs", "epoch/val_acc", "summary/best_val_acc"]
    )
    page.screenshot(path=SHOTS / "6-compare-objective.png", full_page=True)


def test_optuna_dashboard_reads_the_study(sweep_dir, runs, tmp_path):
    exe = shutil.which("optuna-dashboard", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if exe is None:
        skip_or_fail("optuna-dashboard is not installed (pip install -e '.[dev]')")
    storage = f"sqlite:///{sweep_dir}/mlruns/optuna.db"
    url = f"http://{HOST}:{free_port()}"
    cmd = [exe, storage, "--host", HOST, "--port", url.rsplit(":", 1)[1]]
    with serve(cmd, f"{url}/api/studies", tmp_path / "optuna-dashboard.log"):
        summaries = get_json(f"{url}/api/studies")["study_summaries"]
        (summary,) = [s for s in summaries if s["study_name"] == STUDY]
        shown = get_json(f"{url}/api/studies/{summary['study_id']}")["trials"]
    study = optuna.load_study(study_name=STUDY, storage=storage)
    assert [t["number"] for t in shown] == [t.number for t in study.trials]
    for row, trial, run in zip(shown, study.trials, runs.trials, strict=True):
        assert row["state"] == "Complete" and row["values"] == [pytest.approx(trial.value)]
        assert {p["name"] for p in row["params"]} == SEARCHED
        assert [v["step"] for v in row["intermediate_values"]] == list(range(1, EPOCHS + 1))
        assert {a["key"]: a["value"] for a in row["user_attrs"]}["mlflow_run_id"] == run.info.run_id
