"""The convert's progress display and its rate-limited log of skipped records.

The bar counts input bytes as the workers read them (they report every fraction of a second,
not only when a task ends), with the records written beside. Sizes and rates are in the units
of :func:`~fastload.utils.format_size` (KiB, MiB, GiB), as in the summary printed at the end.

On a terminal the bar redraws in place (tqdm). Anywhere else (a log file, CI, a pipe) it would
write carriage-return frames into the log, so a plain line is printed every
``line_seconds`` instead, and one at the end.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..utils import format_size

__all__ = ["Progress", "LINE_SECONDS"]

log = logging.getLogger("fastload.convert")

_FIRST_SKIPS_LOGGED = 10  # then one summary line at most every _SKIP_LOG_SECONDS
_SKIP_LOG_SECONDS = 10.0
_REDRAW_SECONDS = 0.5
LINE_SECONDS = 5.0  # between plain progress lines, when stderr is not a terminal


class Progress:
    """Counts records and input bytes read; shows them on ``file`` (default stderr): a bar on
    a terminal, plain lines elsewhere (see the module docstring)."""

    def __init__(
        self,
        total_bytes: int,
        n_tasks: int,
        *,
        enabled: bool,
        file: IO[str] | None = None,
        line_seconds: float = LINE_SECONDS,
    ) -> None:
        self.records = 0
        self.skipped = 0
        self.bytes = 0
        self.tasks_done = 0
        self.n_tasks = n_tasks
        self.total_bytes = total_bytes
        self.enabled = enabled
        self._file = file if file is not None else sys.stderr
        self._line_seconds = line_seconds
        self._start = time.monotonic()
        self._last_skip_log = 0.0
        self._skip_messages = 0  # reasons received; counts arrive later, in batches
        self._last_draw = self._start  # the first plain line comes after line_seconds
        self._bar: tqdm | None = None
        if enabled and _is_terminal(self._file):
            self._bar = tqdm(
                total=total_bytes,
                desc="convert",
                file=self._file,
                bar_format="{desc} {percentage:3.0f}%|{bar:24}| {postfix}",
                dynamic_ncols=True,
                mininterval=_REDRAW_SECONDS,
            )

    @contextlib.contextmanager
    def active(self) -> Iterator[Progress]:
        """Show progress while the block runs; on a terminal, log lines print above the bar,
        not through it."""
        redirect = logging_redirect_tqdm([log]) if self._bar else contextlib.nullcontext()
        try:
            with redirect:
                yield self
        finally:
            self._close()

    def on_event(self, kind: str, value: Any) -> None:
        """A worker event (see :mod:`.worker`)."""
        if kind == "progress":
            records, skipped, n_bytes = value
            self.records += records
            self.skipped += skipped
            self.bytes += n_bytes
            self._draw(n_bytes)
        elif kind == "skip":
            self._log_skip(value)
        elif kind == "done":
            self.tasks_done += 1
            self._draw(0, force=True)

    def status(self) -> str:
        """What has been done: bytes of input, rate, time left, records, tasks."""
        elapsed = max(1e-9, time.monotonic() - self._start)
        rate = self.bytes / elapsed
        left = (self.total_bytes - self.bytes) / rate if rate > 0 else None
        skipped = f", {self.skipped:,} skipped" if self.skipped else ""
        return (
            f"{format_size(self.bytes)} of {format_size(self.total_bytes)}, "
            f"{format_size(rate)}/s, {_duration(left)} left, "
            f"{self.records:,} records ({self.records / elapsed:,.0f}/s){skipped}, "
            f"tasks {self.tasks_done}/{self.n_tasks}"
        )

    def _draw(self, n_bytes: int, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self._bar is not None:
            self._bar.update(n_bytes)  # tqdm redraws at most every mininterval itself
            if force or now - self._last_draw >= _REDRAW_SECONDS:
                self._last_draw = now
                self._bar.set_postfix_str(self.status())  # and redraws
        elif not force and now - self._last_draw >= self._line_seconds:
            self._last_draw = now  # plain lines: on a timer only, plus the last one
            self._line()

    def _line(self) -> None:
        percent = 100 * self.bytes / self.total_bytes if self.total_bytes else 100.0
        self._file.write(f"convert {percent:3.0f}%: {self.status()}\n")
        self._file.flush()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(self.status(), refresh=False)
            self._bar.close()
        elif self.enabled and self.tasks_done == self.n_tasks:
            self._line()

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


def _is_terminal(file: IO[str]) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _duration(seconds: float | None) -> str:
    """``75`` -> ``"0:01:15"``; unknown -> ``"?"``."""
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
