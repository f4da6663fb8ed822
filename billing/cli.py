"""The `billing` command: serve | report | reconcile | rebuild | project."""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys

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

log = logging.getLogger("billing")

# Subcommands other modules add: name -> (configure parser, run(settings, args) -> exit code)
COMMANDS: dict[str, tuple] = {}


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


def _serve(args: argparse.Namespace) -> int:
    from billing.infra import metrics_dir

    if args.workers is not None and args.workers < 1:
        raise SystemExit("billing: configuration error: --workers must be at least 1")
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    settings = load_serving_settings()
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


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--month", required=True, help="YYYY-MM, in BILLING_REPORT_TZ")
    parser.add_argument("--output", default=None, help="file to write (default: stdout)")
    parser.add_argument("--bom", action="store_true", default=None, help="start with a UTF-8 BOM (Excel)")


def _report(settings: Settings, args: argparse.Namespace) -> int:
    from billing.views.reports import run_cli

    return run_cli(settings, args.month, args.output, args.bom)


COMMANDS["report"] = (_report_arguments, _report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="billing", description="Billing service")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--host", default=SERVE_HOST)
    serve.add_argument("--port", type=int, default=SERVE_PORT)
    serve.add_argument("--workers", type=int, default=None, help="worker processes (default: CPUs)")
    serve.set_defaults(run=_serve)
    from billing.commands import COMMANDS as LEDGER_COMMANDS

    for name, (configure, run) in {**COMMANDS, **LEDGER_COMMANDS}.items():
        command = sub.add_parser(name)
        configure(command)
        command.set_defaults(run=lambda args, run=run: run(Settings(), args))
    return parser


def main(argv: list[str] | None = None) -> None:
    configure_logging()
    args = build_parser().parse_args(argv)
    sys.exit(args.run(args))
