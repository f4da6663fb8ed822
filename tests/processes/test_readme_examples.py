"""The README tour's curl examples run as printed against `billing serve` on the embedded stores."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.servers import free_port

README = Path(__file__).resolve().parents[2] / "README.md"
# Expected status of each curl line of the tour, in order.
EXPECTED = [201, 201, 200, 201, 201, 200, 201, 200, 200, 201, 200, 200, 409]


def tour_curls() -> list[str]:
    text = README.read_text()
    section = text[text.index("<!-- section: tour -->") : text.index("<!-- /section: tour -->")]
    return [line for line in section.splitlines() if line.startswith("curl ")]


@pytest.fixture
def served() -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    env["BILLING_CONFIG_FILE"] = os.devnull
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "billing", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        token = ""
        for line in proc.stdout:
            match = re.search(r"(adm_\S+)", line)
            if match:
                token = match.group(1)
                break
        assert token, "serve did not print a generated admin token"
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while subprocess.run(["curl", "-sf", f"{base}/healthz"], capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.1)
        yield token, base
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def test_readme_curl_examples_work_as_printed(served: tuple[str, str]) -> None:
    token, base = served
    curls = tour_curls()
    assert len(curls) == len(EXPECTED), "update EXPECTED when the README examples change"
    env = {**os.environ, "TOKEN": token, "BASE": base}
    for command, expected in zip(curls, EXPECTED, strict=True):
        result = subprocess.run(
            ["bash", "-c", command + " -w '\\nHTTP_STATUS:%{http_code}'"], env=env, capture_output=True, text=True
        )
        output, _, status = result.stdout.rpartition("HTTP_STATUS:")
        assert int(status) == expected, (command, result.stdout)
        if " -i " in command:
            assert "Idempotent-Replayed: true" in output
    balance = subprocess.run(
        ["curl", "-s", f"{base}/v1/users/1/balance", "-H", f"Authorization: Bearer {token}"],
        capture_output=True,
        text=True,
    ).stdout
    # 100.50 - 0.50 - 10.00 - 25.00 recognized (30 reserved, 5 released), order 43 cancelled
    assert '"available":"65.00"' in balance and '"reserved":"0.00"' in balance
