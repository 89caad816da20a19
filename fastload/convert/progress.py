"""The convert's progress bar and its rate-limited log of skipped records."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .worker import TaskResult

__all__ = ["Progress"]

log = logging.getLogger("fastload.convert")

_FIRST_SKIPS_LOGGED = 10  # then one summary line at most every _SKIP_LOG_SECONDS
_SKIP_LOG_SECONDS = 10.0
_REDRAW_SECONDS = 0.5


class Progress:
    """Counts records and finished input bytes; shows them as a tqdm bar on stderr.

    The bar advances by input bytes as tasks finish (MB/s and ETA are of input); the record
    count and rate update live from the workers' reports.
    """

    def __init__(self, total_bytes: int, n_tasks: int, *, enabled: bool) -> None:
        self.records = 0
        self.skipped = 0
        self.tasks_done = 0
        self.n_tasks = n_tasks
        self._start = time.monotonic()
        self._last_skip_log = 0.0
        self._skip_messages = 0  # reasons received; counts arrive later, in batches
        self._last_redraw = 0.0
        self._bar = tqdm(
            total=total_bytes,
            unit="B",
            unit_scale=True,
            unit_divisor=1000,
            desc="convert",
            file=sys.stderr,
            disable=not enabled,
            smoothing=0.1,
            dynamic_ncols=True,
            mininterval=0.5,
        )
        self.enabled = enabled

    @contextlib.contextmanager
    def active(self) -> Iterator[Progress]:
        """Show the bar while the block runs; log lines print above it, not through it."""
        redirect = logging_redirect_tqdm([log]) if self.enabled else contextlib.nullcontext()
        try:
            with redirect:
                yield self
        finally:
            self._bar.close()

    def on_event(self, kind: str, value: Any) -> None:
        """A worker event (see :mod:`.worker`)."""
        if kind == "records":
            self.records += value[0]
            self.skipped += value[1]
            self._refresh()
        elif kind == "skip":
            self._log_skip(value)
        elif kind == "done":
            self._task_done(value)

    def _task_done(self, result: TaskResult) -> None:
        self.tasks_done += 1
        self._last_redraw = 0.0  # always show the finished task
        self._refresh()
        self._bar.update(result.input_bytes)

    def _refresh(self) -> None:
        """Redraw the record count, at most every _REDRAW_SECONDS (the bar itself only moves
        when a task finishes, which can take a while)."""
        now = time.monotonic()
        if not self.enabled or now - self._last_redraw < _REDRAW_SECONDS:
            return
        self._last_redraw = now
        rate = self.records / max(1e-9, now - self._start)
        skipped = f", {self.skipped:,} skipped" if self.skipped else ""
        text = (
            f"{self.records:,} records ({rate:,.0f}/s){skipped}, "
            f"tasks {self.tasks_done}/{self.n_tasks}"
        )
        self._bar.set_postfix_str(text)

    def _log_skip(self, message: str) -> None:
        self._skip_messages += 1
        if self._skip_messages <= _FIRST_SKIPS_LOGGED:
            log.warning("skipped: %s", message)
            return
        now = time.monotonic()
        if now - self._last_skip_log >= _SKIP_LOG_SECONDS:
            self._last_skip_log = now
            log.warning(
                "skipped %s records so far (the summary shows examples)",
                f"{max(self.skipped, self._skip_messages):,}",
            )
