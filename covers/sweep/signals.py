"""Signals during a sweep: SIGTERM ends it as Ctrl-C does, and the parent run's final status is written whole."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """SIGINT and SIGTERM raise :class:`KeyboardInterrupt` and are remembered. Python prints and drops an exception
    raised while a finalizer runs (``Exception ignored in ...``): a signal that lands in one (e.g. SQLAlchemy's
    weakref cleanup) would be lost, so the sweep calls :meth:`check` between trials to raise it again."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def handle(self, signum: int, frame) -> None:
        self.signum = signum
        raise KeyboardInterrupt(f"signal {signum}")

    def check(self) -> None:
        """Raise :class:`KeyboardInterrupt` if a stop signal arrived since the block began."""
        if self.signum is not None:
            raise KeyboardInterrupt(f"signal {self.signum}")


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """SIGINT and SIGTERM raise :class:`KeyboardInterrupt` while the block runs; the request remembers them."""
    request = StopRequest()
    previous = {s: signal.signal(s, request.handle) for s in STOP_SIGNALS}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM held back while the block runs (a status write is not cut in half), then raised as
    :class:`KeyboardInterrupt`. Python runs signal handlers in the main thread whatever thread the signal reached, so
    swapping the handlers defers them even while other threads run."""
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if caught:
            raise KeyboardInterrupt(f"signal {caught[0]}")
