"""Progress reports: the callback every long stage (preprocess, fit, export, pipelines) takes."""

from __future__ import annotations

from typing import Callable


Progress = Callable[[float, str], None]  # (fraction in [0, 1], stage description); may raise to stop the work


def no_progress(fraction: float, stage: str) -> None:
    """The default :data:`Progress`: reports nothing."""
