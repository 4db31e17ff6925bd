"""Progress lines for logs without a terminal (SLURM, nohup): one at every tenth of a pass."""

from __future__ import annotations

import logging
import re

import pytest

from seal_exp.training import progress_lines
from seal_exp.training.progress_lines import ProgressLines


@pytest.fixture
def no_terminal(monkeypatch):
    monkeypatch.setattr(progress_lines, "interactive", lambda: False)


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "seal_exp"]


def run_pass(progress: ProgressLines, steps: range, loss: float | None = None) -> None:
    for step in steps:
        progress.update(step, loss)


def test_a_line_at_every_tenth_of_an_epoch(no_terminal, caplog):
    with caplog.at_level(logging.INFO, logger="seal_exp"):
        run_pass(ProgressLines("student 2/8", 25, enabled=True), range(1, 26), loss=0.5)
    said = lines(caplog)
    done = [int(re.search(r"\((\d+)/25 steps\)", line).group(1)) for line in said]
    assert done == [3, 5, 8, 10, 13, 15, 18, 20, 23, 25]  # the first step past each tenth
    assert said[-1].startswith("student 2/8: 100% (25/25 steps)") and said[-1].endswith("loss 0.5000")
    assert all(" left" in line and "steps/s" in line for line in said)


def test_a_resumed_epoch_continues_from_where_it_stopped(no_terminal, caplog):
    with caplog.at_level(logging.INFO, logger="seal_exp"):
        run_pass(ProgressLines("student 1/1", 10, enabled=True, done=6), range(7, 11))
    assert [re.search(r"(\d+)%", line).group(1) for line in lines(caplog)] == ["70", "80", "90", "100"]


def test_quarters_for_an_evaluation(no_terminal, caplog):
    with caplog.at_level(logging.INFO, logger="seal_exp"):
        run_pass(ProgressLines("student 1 validation", 8, enabled=True, parts=4), range(1, 9))
    assert [re.search(r"\((\d)/8", line).group(1) for line in lines(caplog)] == ["2", "4", "6", "8"]


def test_silent_on_a_terminal_or_when_progress_is_off(monkeypatch, caplog):
    with caplog.at_level(logging.INFO, logger="seal_exp"):
        monkeypatch.setattr(progress_lines, "interactive", lambda: True)  # the bar shows instead
        run_pass(ProgressLines("student 1/1", 10, enabled=True), range(1, 11))
        monkeypatch.setattr(progress_lines, "interactive", lambda: False)
        run_pass(ProgressLines("student 1/1", 10, enabled=False), range(1, 11))  # trainer.progress=false
    assert lines(caplog) == []
