"""Running wrk with the Lua scripts in bench/wrk/ and reading its figures."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

WRK_DIR = Path(__file__).resolve().parent / "wrk"
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass
class WrkResult:
    """One closed-loop wrk run: throughput, latency percentiles (ms) and failures."""

    rate: float
    p50: float
    p99: float
    requests: int
    failures: int
    cpu_us: float = 0.0  # worker CPU per request (user + system), independent of what else runs
    redis_cpu_us: float = 0.0  # redis-server CPU per request


@dataclass
class PacedResult:
    """One paced (fixed-rate) run: latency from the scheduled send time, in ms."""

    target_rate: float
    achieved_rate: float
    count: int
    failures: int
    p50: float
    p90: float
    p99: float
    p999: float
    max: float


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    return found


def wrk_version() -> str:
    out = subprocess.run([wrk_binary(), "-v"], capture_output=True, text=True, timeout=10)
    return (out.stdout + out.stderr).splitlines()[0].strip() if (out.stdout + out.stderr) else "wrk"


def _ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


MANY_IDS = 100  # user ids per GET /v1/balances in the "many" mode


def _env(mode: str, paths: dict[str, str], token: str, run_id: str, users: int, extra: dict[str, str]) -> dict:
    env = dict(os.environ)
    env.update(
        BENCH_MODE=mode,
        BENCH_POST_PATH=paths["post"],
        BENCH_GET_PATH=paths["get"],
        BENCH_MANY_PATH=paths.get("many", ""),
        BENCH_MANY_IDS=str(MANY_IDS),
        BENCH_TOKEN=token,
        BENCH_RUN=run_id,
        BENCH_USERS=str(users),
        **extra,
    )
    return env


def run_closed(
    url: str,
    mode: str,
    paths: dict[str, str],
    token: str,
    run_id: str,
    *,
    seconds: float,
    connections: int,
    threads: int = 1,
    users: int = 1000,
) -> WrkResult:
    """As fast as the server answers: `connections` keep-alive connections, each one request at a time."""
    cmd = [
        wrk_binary(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-s",
        str(WRK_DIR / "load.lua"),
        url,
    ]
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=seconds + 60, env=_env(mode, paths, token, run_id, users, {})
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    failures = 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        failures += int(non2xx.group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if errors:
        failures += sum(int(g) for g in errors.groups())
    return WrkResult(rate, p50, p99, requests, failures)


def run_paced(
    url: str,
    mode: str,
    paths: dict[str, str],
    token: str,
    run_id: str,
    *,
    rate: float,
    seconds: float,
    connections: int = 8,
    users: int = 1000,
) -> PacedResult:
    """A fixed total rate over `connections` connections (one wrk thread each), latency without coordinated omission."""
    interval_ms = connections * 1000.0 / rate
    cmd = [
        wrk_binary(),
        f"-t{connections}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "-s",
        str(WRK_DIR / "paced.lua"),
        url,
    ]
    env = _env(mode, paths, token, run_id, users, {"BENCH_INTERVAL_MS": f"{interval_ms:.3f}"})
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, env=env).stdout
    fields = re.search(r"^PACED (.*)$", out, re.M).group(1).split()
    count, failures = int(fields[0]), int(fields[1])
    p50, p90, p99, p999, worst = (float(v) for v in fields[2:])
    achieved = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
    return PacedResult(rate, achieved, count, failures, p50, p90, p99, p999, worst)
