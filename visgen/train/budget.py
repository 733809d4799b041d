"""The run's time: the wall-time limit of one session and the training budget summed over a run's resumes."""

from __future__ import annotations

import time

from visgen.train.train_config import TrainConfig


class TimeBudget:
    """This session's training time plus the earlier sessions' (from the checkpoint), as every process agreed.

    ``host_values`` is what a process reports with each step's verdict; ``agree`` takes the processes' mean back, so
    every process decides on the same time (``train.budget_minutes``) and the same stop (``time_limit_minutes``)."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.before = 0.0  # the training time of the run's sessions before this one
        self.spent = 0.0  # all the run's training time so far, as every process agreed at the last verdict
        self.t_start = time.perf_counter()

    def start(self):
        self.t_start = time.perf_counter()

    def session_seconds(self) -> float:
        return time.perf_counter() - self.t_start

    def host_values(self) -> tuple[bool, float]:
        """(past this session's time limit, the run's training time) as this process sees them now."""
        ran = self.session_seconds()
        return bool(self.cfg.time_limit_minutes) and ran > 60 * self.cfg.time_limit_minutes, self.before + ran

    def agree(self, seconds: float):
        self.spent = seconds

    def load(self, seconds: float):
        self.before = self.spent = seconds

    @property
    def used(self) -> float:
        """The fraction of ``budget_minutes`` spent (0 without a budget)."""
        return self.spent / (60 * self.cfg.budget_minutes) if self.cfg.budget_minutes else 0.0

    @property
    def spent_all(self) -> bool:
        return self.used >= 1
