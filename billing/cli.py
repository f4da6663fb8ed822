"""The `billing` command: serve | report | project | reconcile | rebuild | console-user | audit.

Every command reads the checked Settings (a bad one is one line on stderr); a CommandError is one line
`billing <command>: <message>` and its exit status; usage errors are one line and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
import textwrap
from typing import NoReturn

from billing.api.auth import generate_admin_token
from billing.core.config import (
    LOG_LEVEL,
    SERVE_HOST,
    SERVE_PORT,
    ConfigError,
    Settings,
    check_settings,
    describe_validation_error,
)
from billing.core.roles import Role
from billing.terminal import Command, CommandError, setting_help, settings_epilog, showing

log = logging.getLogger("billing")

# Variables read outside Settings: (name, meaning and default).
PROCESS_VARIABLES = (
    ("BILLING_CONFIG_FILE", "a file of BILLING_* lines (default: config/billing.env when it exists)"),
    ("BILLING_LOG_LEVEL", f"level of the log on stderr (default: {LOG_LEVEL})"),
)
HELP_WIDTH = 78  # descriptions are filled here: the help formatter keeps the lines of the settings lists
MORE = "Meanings of the settings: docs/operations.md, section Configuration."


def configure_logging() -> None:
    from billing.infra.observability import configure_access_log

    logging.basicConfig(
        level=os.environ.get("BILLING_LOG_LEVEL", LOG_LEVEL),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    configure_access_log(sys.stderr)


def prepare_serving_settings(settings: Settings, workers: int) -> Settings:
    """Refuse unsafe combinations and fill in generated secrets before any worker forks."""
    if workers > 1 and settings.embedded:
        raise SystemExit(
            "billing: --workers above 1 needs BILLING_REDIS_URL and BILLING_MONGO_URL: "
            "the embedded stores live inside one process."
        )
    updates: dict[str, object] = {}
    if not settings.tokens:
        token = generate_admin_token()
        updates["tokens"] = {token: [Role.ADMIN.value]}
        # Printed once, like Jupyter does, so the service never runs open by accident.
        print(f"No BILLING_TOKENS configured. Generated admin token (shown once):\n    {token}", flush=True)
    if not settings.secret:
        updates["secret"] = secrets.token_urlsafe(32)
        log.warning("BILLING_SECRET not set: generated one for this run; report links die with the process")
    return settings.model_copy(update=updates)


def load_serving_settings() -> Settings:
    """The whole configuration, checked: any error exits with one line on stderr before a socket or a fork."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    try:
        settings = Settings()
        check_settings(settings)
    except ValidationError as exc:
        raise SystemExit(f"billing: configuration error: {describe_validation_error(exc)}") from None
    except (SettingsError, ConfigError) as exc:
        message = " ".join(str(exc).split())
        raise SystemExit(f"billing: configuration error: {message}") from None
    return settings


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from billing.infra import metrics_dir

    if args.workers is not None and args.workers < 1:
        raise SystemExit("billing: configuration error: --workers must be at least 1")
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    if settings.embedded and args.workers is None:
        workers = 1
    settings = prepare_serving_settings(settings, workers)
    # Before billing.server imports prometheus_client: workers must share metric files.
    created = metrics_dir.prepare(workers)
    try:
        from billing.server import serve

        serve(settings, args.host, args.port, workers)
    finally:
        metrics_dir.cleanup(created)
    return 0


def _configure_serve(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Serve the HTTP API (and the console) with a supervisor and its worker processes. The whole "
        "configuration is checked before anything binds or forks."
    )
    parser.add_argument("--host", default=SERVE_HOST, help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=SERVE_PORT, help="port to listen on (default: %(default)s)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="worker processes (default: the number of CPUs; 1 with the embedded stores)",
    )


def _configure_report(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Write the monthly revenue report, the same CSV as the signed link, to stdout or to a file "
        "(replaced atomically). A closed month comes from the report cache when it is there."
    )
    parser.add_argument(
        "--month",
        required=True,
        metavar="YYYY-MM",
        help=f"the month, in BILLING_REPORT_TZ (required; no default; {setting_help('report_tz')})",
    )
    parser.add_argument(
        "--output", default=None, metavar="FILE", help="file to write, '-' for stdout (default: stdout)"
    )
    parser.add_argument(
        "--bom",
        action="store_true",
        default=None,
        help=f"start with a UTF-8 BOM, for Excel ({setting_help('report_bom')})",
    )


def _report(settings: Settings, args: argparse.Namespace) -> int:
    from billing.views.reports import run_cli

    return run_cli(settings, args.month, args.output, args.bom, working=showing)


COMMANDS: dict[str, Command] = {
    "serve": Command(
        "serve the HTTP API and the console",
        tuple(Settings.model_fields),
        _configure_serve,
        _serve,
    ),
    "report": Command(
        "write the monthly revenue report CSV to stdout or a file",
        ("mongo_url", "mongo_db", "report_tz", "reports_dir", "report_bom"),
        _configure_report,
        _report,
    ),
}


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr (exit status 2), pointing at --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def _all_settings_epilog() -> str:
    width = max(len(name) for name, _ in PROCESS_VARIABLES) + 2
    process = "\n".join(f"  {name:<{width}}{meaning}" for name, meaning in PROCESS_VARIABLES)
    return f"{settings_epilog(title='settings')}\n\nalso read:\n{process}\n\n{MORE}"


def build_parser() -> argparse.ArgumentParser:
    from billing.commands import COMMANDS as LEDGER_COMMANDS
    from billing.console_commands import COMMANDS as CONSOLE_COMMANDS

    commands = {**COMMANDS, **LEDGER_COMMANDS, **CONSOLE_COMMANDS}
    parser = Parser(
        prog="billing",
        description="The billing service and the commands that operate it.",
        epilog=_all_settings_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>", title="commands")
    for name, command in commands.items():
        # The entry in `billing --help` is the summary; the command's own --help has a paragraph.
        child = sub.add_parser(
            name,
            help=command.summary,
            description=command.summary,
            epilog=settings_epilog(command.settings)
            if name != "serve"
            else f"It reads every setting: see billing --help. {MORE}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.configure(child)
        child.description = textwrap.fill(child.description or command.summary, HELP_WIDTH)
        child.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> None:
    configure_logging()
    args = build_parser().parse_args(argv)
    prog = f"billing {args.command}"
    try:
        code = args.run(load_serving_settings(), args)
    except CommandError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        code = exc.code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
