"""Progress without a terminal. A SLURM log or a ``nohup`` file gets no progress bar (tqdm turns itself
off there), so a long epoch or evaluation would be silent until it ends. Instead a line goes to the
log (console and ``train.log``) at every tenth of a training epoch and every quarter of an evaluation:
how far, how fast, how long still."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("seal_exp")


def interactive() -> bool:
    """Whether a progress bar can be drawn (tqdm's own test: stderr is a terminal)."""
    return sys.stderr.isatty()


class ProgressLines:
    """``update(done)`` after each step of a pass of ``total`` steps logs a line whenever another
    ``1/parts`` of it is done; silent where a progress bar shows (a terminal) or when not ``enabled``."""

    def __init__(self, what: str, total: int | None, enabled: bool, done: int = 0, parts: int = 10) -> None:
        self.what, self.total, self.parts = what, total or 0, parts
        self.enabled = enabled and self.total > 0 and not interactive()
        self.start_done, self.started = done, time.perf_counter()
        self.next_part = done * parts // self.total + 1 if self.total else parts + 1

    def update(self, done: int, loss: float | None = None) -> None:
        if not self.enabled or done * self.parts < self.next_part * self.total:
            return
        self.next_part = done * self.parts // self.total + 1
        elapsed = time.perf_counter() - self.started
        rate = (done - self.start_done) / elapsed if elapsed > 0 else 0.0
        left = (self.total - done) / rate if rate > 0 else 0.0
        loss_part = f", loss {loss:.4f}" if loss is not None else ""
        log.info(
            "%s: %3d%% (%d/%d steps), %.2f steps/s, %s left%s",
            self.what,
            100 * done // self.total,
            done,
            self.total,
            rate,
            _clock(left),
            loss_part,
        )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
