"""`billing` as a person meets it: help that lists every command and option with its default and environment
variable, and errors that are one line on stderr with a non-zero exit status."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from billing.core.config import PROJECT_ROOT, Settings
from tests.support.servers import RedisServer, free_port

BILLING = str(Path(sys.executable).with_name("billing"))
COMMANDS = (
    "serve",
    "report",
    "project",
    "reconcile",
    "rebuild",
    "recover",
    "verify",
    "events",
    "console-user",
    "audit",
)


def env(**settings: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BILLING_")}
    return {**clean, "BILLING_CONFIG_FILE": os.devnull, **settings}


def billing(*args: str, environment: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BILLING, *args],
        env=environment if environment is not None else env(),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def help_entries(text: str, section: str) -> dict[str, str]:
    """The entries of a help section ("options:", "commands:"): first word -> its text, wrapped lines joined."""
    body = text.split(f"\n{section}\n", 1)[1].split("\n\n", 1)[0]
    entries: dict[str, str] = {}
    current = ""
    for line in body.splitlines():
        indent = len(line) - len(line.lstrip())
        if indent <= 4 and line.strip() and not line.strip().startswith("<"):
            current = line.split()[0].rstrip(",")
            entries[current] = " ".join(line.split()[1:])
        elif current:
            entries[current] += " " + line.strip()
    return {name: " ".join(words.split()) for name, words in entries.items()}


def settings_listed(text: str) -> dict[str, str]:
    """BILLING_* variable -> its default, from the settings lists of a help text."""
    return dict(re.findall(r"^\s+(BILLING_[A-Z_]+)\s+default: (.+)$", text, re.M))


def test_billing_help_gives_every_command_a_sentence_and_every_setting_its_default() -> None:
    done = billing("--help")
    assert done.returncode == 0 and done.stderr == ""
    commands = help_entries(done.stdout, "commands:")
    assert sorted(commands) == sorted(COMMANDS), commands
    for name, sentence in commands.items():
        assert len(sentence.split()) >= 4, (name, sentence)
    listed = settings_listed(done.stdout)
    for field, info in Settings.model_fields.items():
        variable = f"BILLING_{field.upper()}"
        assert variable in listed, variable
        default = info.get_default(call_default_factory=True)
        if isinstance(default, str | int | float) and not isinstance(default, bool):
            assert listed[variable] == str(default), (variable, listed[variable])
    assert listed["BILLING_REDIS_URL"] == "unset" and listed["BILLING_REPORT_BOM"] == "false"
    assert "BILLING_LOG_LEVEL" in done.stdout and "BILLING_CONFIG_FILE" in done.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_help_says_what_it_does_and_each_option_its_default(command: str) -> None:
    done = billing(command, "--help")
    assert done.returncode == 0 and done.stderr == ""
    usage, description = done.stdout.split("\n\n")[:2]
    assert usage.startswith(f"usage: billing {command}")
    assert len(description.split()) >= 10, description
    options = help_entries(done.stdout, "options:")
    options.pop("-h")
    for option, text in options.items():
        assert "default" in text, (option, text)
    if command != "serve":
        listed = settings_listed(done.stdout)
        assert listed and all(default for default in listed.values()), listed


def test_options_that_stand_for_a_setting_name_its_variable_and_default() -> None:
    options = help_entries(billing("report", "--help").stdout, "options:")
    assert "env BILLING_REPORT_BOM, default: false" in options["--bom"]
    assert "env BILLING_REPORT_TZ, default: Europe/Moscow" in options["--month"]
    options = help_entries(billing("rebuild", "--help").stdout, "options:")
    assert "(default: 30.0)" in options["--drain-timeout"] and "default" in options["--force"]


def unreachable_redis() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def unreachable_mongo() -> str:
    return f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"


ERRORS: dict[str, tuple[list[str], dict[str, str], str]] = {
    "unknown command": (["frobnicate"], {}, "invalid choice: 'frobnicate'"),
    "no command": ([], {}, "required: <command>"),
    "unknown option": (["reconcile", "--nope"], {}, "unrecognized arguments: --nope"),
    "report without a month": (["report"], {}, "required: --month"),
    "bad month": (["report", "--month", "2025-13"], {"BILLING_MONGO_URL": "mongodb://127.0.0.1:1/"}, "YYYY-MM"),
    "report on the embedded store": (["report", "--month", "2025-11"], {}, "needs BILLING_MONGO_URL"),
    "reconcile on the embedded stores": (["reconcile"], {}, "needs BILLING_REDIS_URL and BILLING_MONGO_URL"),
    "events tail on the embedded stores": (["events", "tail"], {}, "needs BILLING_REDIS_URL and BILLING_MONGO_URL"),
    "events without its action": (["events"], {}, "required: action"),
    "bad setting": (["rebuild"], {"BILLING_PROJECTOR_BATCH": "0"}, "BILLING_PROJECTOR_BATCH"),
    "bad --drain-timeout": (["reconcile", "--drain-timeout", "soon"], {}, "--drain-timeout"),
}


@pytest.mark.parametrize("case", list(ERRORS), ids=list(ERRORS))
def test_an_error_is_one_line_on_stderr_and_a_failing_exit_status(case: str) -> None:
    args, settings, expected = ERRORS[case]
    assert_one_line_error(billing(*args, environment=env(**settings)), expected)


@pytest.mark.parametrize("command", ["reconcile", "rebuild", "recover", "project"])
def test_an_unreachable_redis_is_one_line(command: str) -> None:
    environment = env(BILLING_REDIS_URL=unreachable_redis(), BILLING_MONGO_URL=unreachable_mongo())
    done = billing(command, environment=environment)
    assert_one_line_error(done, f"billing {command}: Redis unreachable (BILLING_REDIS_URL)")
    assert done.returncode == 2


def test_an_unreachable_mongodb_is_one_line(redis_server: RedisServer, tmp_path: Path) -> None:
    environment = env(
        BILLING_REDIS_URL=redis_server.url,
        BILLING_MONGO_URL=unreachable_mongo(),
        BILLING_REPORTS_DIR=str(tmp_path),  # no cached month to answer without MongoDB
    )
    done = billing("rebuild", environment=environment)
    assert_one_line_error(done, "billing rebuild: MongoDB unreachable (BILLING_MONGO_URL)")
    assert done.returncode == 2
    done = billing("report", "--month", "2025-11", environment=environment)
    assert_one_line_error(done, "billing report: MongoDB failed (BILLING_MONGO_URL)")
    assert done.returncode == 2


def assert_one_line_error(done: subprocess.CompletedProcess[str], expected: str) -> None:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0, done
    assert len(lines) == 1 and expected in lines[0], done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
