"""A worker thread that runs ``step()`` while there is work: the serving engine's loop, shared by
every scheduler that serves from a thread of its own (the engine, the served vLLM reasoner)."""

from __future__ import annotations

import threading


class BackgroundSteps:
    """``start`` runs ``step()`` in a daemon thread while ``busy`` until ``close``; ``_work.set()``
    wakes it at once when work arrives (otherwise it looks every 50 ms). A step's exception goes to
    ``_fail_all`` and the thread keeps serving the next requests."""

    thread_name = "tte-fast-steps"

    def __init__(self):
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._work = threading.Event()

    @property
    def busy(self) -> bool:
        raise NotImplementedError

    def step(self):
        raise NotImplementedError

    def _fail_all(self, error: BaseException) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Run steps in a background thread until ``close`` (for serving)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._work.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.busy:
                self._work.wait(0.05)
                self._work.clear()
                continue
            try:
                self.step()
            except Exception as error:  # fail the requests in flight, keep serving the next ones
                self._fail_all(error)
