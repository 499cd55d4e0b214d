"""Work that must not hold up training: one job at a time on a worker thread.

A job submitted while the previous one still runs is refused rather than queued, so a slow
network never makes training wait and never builds a backlog of stale uploads; the caller's
next periodic tick simply tries again with fresher data.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from typing import Any


class BackgroundTask:
    """A single worker thread named ``name``; ``submit`` → False while busy. ``completed``
    counts the jobs that ended well; ``take_failures`` returns the errors of the others."""

    def __init__(self, name: str) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name)
        self._future: concurrent.futures.Future | None = None
        self._completed = 0
        self._failures: list[BaseException] = []

    @property
    def busy(self) -> bool:
        return self._future is not None and not self._future.done()

    @property
    def completed(self) -> int:
        self._settle()
        return self._completed

    def submit(self, job: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
        """Start ``job(*args, **kwargs)`` unless one is still running; False when refused."""
        if self.busy:
            return False
        self._settle()
        self._future = self._executor.submit(job, *args, **kwargs)
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the running job (if any) ends; False if it is still running."""
        if self._future is not None:
            try:
                self._future.exception(timeout)
            except concurrent.futures.TimeoutError:
                return False
        return True

    def take_failures(self) -> list[BaseException]:
        """The errors of jobs that failed since the last call."""
        self._settle()
        failures, self._failures = self._failures, []
        return failures

    def close(self) -> None:
        """Let the thread go once its job (if any) ends; do not wait for it."""
        self._executor.shutdown(wait=False)

    def _settle(self) -> None:
        """Account for the last job once it has ended."""
        if self._future is None or not self._future.done():
            return
        error = self._future.exception()
        if error is None:
            self._completed += 1
        else:
            self._failures.append(error)
        self._future = None
