"""What the benchmark ran on: cores, CPU model, memory, load, and the versions that matter."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("tornado", "redis", "hiredis", "orjson", "pydantic", "motor", "SecantusDB")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_ticks() -> tuple[int, int]:
    """(steal, all) clock ticks of every CPU since boot (/proc/stat): steal is time the hypervisor gave this VM's
    CPUs to others while they had work, which slows every process here alike and moves from minute to minute."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (fields[7] if len(fields) == 8 else 0), sum(fields)


def stolen_since(before: tuple[int, int]) -> float:
    """The share of CPU time stolen since cpu_ticks() returned `before` (0 .. 1)."""
    steal, total = cpu_ticks()
    return (steal - before[0]) / (total - before[1]) if total > before[1] else 0.0


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_total() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return "unknown"


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10).stdout
    return out.split("v=", 1)[1].split()[0] if "v=" in out else out.strip()


def describe(wrk: str) -> dict[str, str]:
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model(),
        "memory": memory_total(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": ", ".join(versions),
        "redis-server": redis_version(),
        "wrk": wrk,
    }
