"""The history examples of docs/api.md run as printed, after the README tour's examples, on `billing serve`."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from tests.processes.test_readme_examples import served, tour_curls  # noqa: F401 (fixture)

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def history_script() -> str:
    text = API_DOC.read_text()
    section = text[text.index("<!-- section: history-api -->") : text.index("<!-- /section: history-api -->")]
    block = section[section.index("```sh\n") + len("```sh\n") :]
    return block[: block.index("```")]


def json_documents(output: str) -> list[dict]:
    decoder, docs, at = json.JSONDecoder(), [], 0
    while at < len(output):
        if output[at].isspace():
            at += 1
            continue
        doc, at = decoder.raw_decode(output, at)
        docs.append(doc)
    return docs


def test_readme_history_examples_work_as_printed(served: tuple[str, str]) -> None:  # noqa: F811
    token, base = served
    env = {**os.environ, "TOKEN": token, "BASE": base}
    for command in tour_curls():
        subprocess.run(["bash", "-c", command], env=env, capture_output=True, check=True)
    script = "set -euo pipefail\n" + history_script()
    # History is eventually consistent: wait until the projector has the last operation of the examples.
    deadline = time.monotonic() + 30
    while True:
        pages = json_documents(
            subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True).stdout
        )
        if len(pages) == 3 and len(pages[0]["items"]) == 2 and pages[0]["items"][0]["order_id"] == 43:
            break
        assert time.monotonic() < deadline, pages
        time.sleep(0.2)
    first, second, english = pages
    assert [item["type"] for item in first["items"]] == ["reserve", "charge"] and first["next_cursor"]
    assert first["items"][1]["description"] == "Списание 25.00 ₽ за услугу «Продвижение», заказ 42"
    assert [item["type"] for item in second["items"]] == ["reserve", "deposit"] and second["next_cursor"] is None
    assert [item["amount"] for item in english["items"]] == [
        "0.50",
        "5.00",
        "5.00",
        "5.00",
        "10.00",
        "25.00",
        "30.00",
        "100.50",
    ]
    assert english["items"][-1]["description"] == "Deposit of 100.50 RUB"
