"""Where pre-forked workers share Prometheus metric files; set up before prometheus_client is imported."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare(workers: int) -> Path | None:
    """For more than one worker: an empty metrics directory in the environment the workers inherit.

    prometheus_client picks its value storage when it is imported, so the supervisor calls this
    before importing anything that imports prometheus_client. An operator-given directory is emptied
    (files of dead processes from an earlier run would be summed in); otherwise a temporary one is made.
    Returns the directory to remove at exit (None when there is nothing of ours to remove).
    """
    if workers <= 1:
        os.environ.pop(ENV, None)
        return None
    given = os.environ.get(ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for child in path.glob("*.db"):
            child.unlink()
        return None
    path = Path(tempfile.mkdtemp(prefix="billing-metrics-"))
    os.environ[ENV] = str(path)
    return path


def cleanup(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
