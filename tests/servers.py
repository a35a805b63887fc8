"""Test helpers: local HTTP services (MLflow server, optuna-dashboard) on free loopback ports, shut down after use."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def get_json(url: str, params: Mapping[str, Any] | None = None, timeout: float = 30) -> Any:
    """GET ``url`` (with query ``params``) and decode its JSON body."""
    if params:
        url = f"{url}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.load(response)


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Poll ``url`` until it answers 200; fail with the service's log if it exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not up after {timeout:.0f} s:\n{log.read_text()[-4000:]}")


@contextmanager
def serve(
    cmd: Sequence[str], health_url: str, log: Path, env: Mapping[str, str] | None = None, timeout: float = 180
) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` in its own process group until the block ends (SIGTERM, then SIGKILL to the whole group)."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            list(cmd), stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
        )
    try:
        wait_until_up(health_url, proc, log, timeout)
        yield proc
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def mlflow_server_cmd(backend_uri: str, artifacts: Path, port: int) -> list[str]:
    """``mlflow server`` on the loopback port: one worker, artifacts proxied into the folder ``artifacts``."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        str(artifacts),
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


# MLflow 3's server also starts job consumers for GenAI features; tests need none of them
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, log: Path) -> Iterator[str]:
    """A running ``mlflow server`` on a free loopback port; yields its base URL."""
    port = free_port()
    url = f"http://{HOST}:{port}"
    with serve(mlflow_server_cmd(backend_uri, artifacts, port), f"{url}/health", log, MLFLOW_SERVER_ENV):
        yield url
