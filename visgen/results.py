"""Results files: ``results/NAME.json`` = name, date, commit, hardware, command, metrics."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from visgen.config import ConfigError


def hardware() -> str:
    """A one-line description of the machine: GPU name(s) or CPU, and torch version."""
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        dev = f"{len(names)} x {names[0]}"
    else:
        dev = f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    return f"{dev}; torch {torch.__version__}"


def commit() -> str:
    """The git commit of the code (``VISGEN_COMMIT`` where the checkout has no .git, e.g. on a remote GPU)."""
    if os.environ.get("VISGEN_COMMIT"):
        return os.environ["VISGEN_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def check_writable(folder: str | Path, what: str) -> None:
    """Fail before the expensive work when ``folder`` (created if missing) cannot be written; ``what`` names the
    option in the message."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write to {what} {folder}: {e.strerror or e}") from None


def metrics_line(metrics: dict) -> str:
    """Metrics as one printed line, ``name=value`` each, floats to 4 significant digits."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def write_result(path: str | Path, name: str, metrics: dict, command: str | None = None) -> Path:
    """Write one result file; ``command`` defaults to this process's command line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "name": name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit(),
        "hardware": hardware(),
        "command": command or shlex.join([Path(sys.executable).name, *sys.argv]),
        "metrics": metrics,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
