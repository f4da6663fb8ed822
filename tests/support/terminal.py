"""Run a command with its stdin, stdout and stderr on a pseudo-terminal, as a person at a terminal would."""

from __future__ import annotations

import os
import pty
import subprocess


def run_in_terminal(command: list[str], env: dict[str, str], timeout: float = 120) -> tuple[int, str]:
    """(exit status, everything the terminal received: stdout and stderr together, escapes included)."""
    primary, secondary = pty.openpty()
    try:
        process = subprocess.Popen(
            command,
            stdin=secondary,
            stdout=secondary,
            stderr=secondary,
            env={**env, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"},
            close_fds=True,
        )
    finally:
        os.close(secondary)
    received = bytearray()
    try:
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the last holder of the terminal's other end has gone
                break
            if not chunk:
                break
            received += chunk
        code = process.wait(timeout=timeout)
    finally:
        os.close(primary)
    return code, received.decode("utf-8", "replace")
