"""py-spy on one worker during the memory run: where a worker's time goes, as a short table."""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path

# A sample belongs to the layer of its innermost frame that matches one of these (own time per layer:
# a socket write called by Tornado counts as the event loop's, Tornado's header parsing as Tornado's).
LAYERS = (
    (
        "access log + metrics (billing/infra observability, metrics; prometheus_client)",
        r"\((billing/infra/(observability|metrics)|prometheus_client/)",
    ),
    ("outbox projector (billing/projection; motor, pymongo, bson)", r"\((billing/projection/|motor/|pymongo/|bson/)"),
    (
        "validation (pydantic; billing schemas, jsonbody, parsing, money)",
        r"\((pydantic|billing/core/(schemas|parsing|money)|billing/api/jsonbody)",
    ),
    (
        "rendering (billing/views render, descriptions; timefmt)",
        r"\(billing/(views/(render|descriptions)|core/timefmt)",
    ),
    ("Redis client (redis-py + hiredis; billing/infra/redis_raw)", r"\((redis/|billing/infra/redis_raw)"),
    ("billing handlers, auth, ledger, operations", r"\(billing/"),
    ("floor app handler", r"\(bench/"),
    ("Tornado HTTP (parse, route, headers, write)", r"\(tornado/"),
    ("asyncio event loop + sockets", r"\((asyncio/|selectors\.py)"),
    ("logging (stdlib)", r"\(logging/"),
)


def py_spy() -> str | None:
    found = Path(sys.executable).with_name("py-spy")
    return str(found) if found.exists() else shutil.which("py-spy")


def record(pid: int, seconds: float, output: Path) -> bool:
    binary = py_spy()
    if binary is None:
        return False
    cmd = [
        binary,
        "record",
        "-p",
        str(pid),
        "-d",
        str(max(1, int(seconds))),
        "-r",
        "250",
        "--gil",
        "-f",
        "raw",
        "-o",
        str(output),
    ]
    done = subprocess.run(cmd, capture_output=True, timeout=seconds + 60)
    return done.returncode == 0 and output.exists()


def _layer(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, pattern in LAYERS:
            if re.search(pattern, frame):
                return name
    return "other (interpreter, stdlib)"


def summarize(raw: Path, top: int = 12) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(share of samples per layer, top functions by own time) from py-spy's raw (collapsed) output."""
    layers: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        leaf = re.sub(r" \((?:.*/)?(site-packages/|lib/python3\.\d+/)?", " (", frames[-1])
        own[re.sub(r":\d+\)$", ")", leaf)] += samples
        layers[_layer(frames)] += samples
    if not total:
        return [], []
    return (
        [(name, 100 * n / total) for name, n in layers.most_common()],
        [(name, 100 * n / total) for name, n in own.most_common(top)],
    )
