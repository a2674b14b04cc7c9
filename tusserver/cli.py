"""The `tusserver` command: `serve` and `migrate`.

Every `serve` flag has a twin environment variable `TUSSERVER_<FLAG>` (flag wins); operators script
against these names, so they stay stable. This is the only module that prints.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Sequence
from types import FrameType

import uvicorn

from tusserver import logs, metrics
from tusserver.allocator import export_to_children, tune_malloc
from tusserver.app import create_app
from tusserver.config import ENV_PREFIX, Settings
from tusserver.database import downgrade, make_engine, migrate
from tusserver.interim import InterimHttpToolsProtocol
from tusserver.outbox import Outbox
from tusserver.preflight import StartupProblem, explain, run_checks
from tusserver.runtime import build_hooks, running
from tusserver.workers import run_workers

# (flag, metavar, help); a metavar of None makes an on/off switch.
_SERVE_FLAGS: list[tuple[str, str | None, str]] = [
    ("host", "ADDRESS", "interface to listen on (default 127.0.0.1; 0.0.0.0 for all)"),
    ("port", "PORT", "TCP port (default 1080)"),
    ("base-path", "PATH", "URL path of the tus endpoint (default /files/)"),
    ("data-dir", "DIR", "directory for upload bytes and the default SQLite database (default ./data)"),
    ("database-url", "URL", "postgresql://user@host/db or sqlite:///file.db (default: SQLite in data dir)"),
    ("max-size", "BYTES", "largest upload accepted, e.g. 10G or 1048576 (default: no limit)"),
    ("on-finish", "MODULE:FUNC", "Python callable run once per finished upload (sync or async)"),
    ("webhook-url", "URL", "URL that receives a JSON POST once per finished upload"),
    ("hooks-python", "MODULE:OBJECT", "Python object with a method per hook event (pre_create, ...)"),
    ("hooks-http", "URL", "receiver of tusd v2 HTTP hooks (pre-create, post-finish, ...)"),
    ("hooks-enabled-events", "EVENTS", "hook events sent, comma-separated (default: tusd's set)"),
    ("hooks-http-timeout", "SECONDS", "time limit of one --hooks-http call (default: --hook-timeout)"),
    ("hooks-http-forward-headers", "HEADERS", "request headers copied onto hook requests, comma-separated"),
    ("hooks-secret", "SECRET", "sign every hook request with HMAC-SHA256 (Tusserver-Signature)"),
    ("progress-interval", "SECONDS", "at most one post-receive hook per upload this often (default 1)"),
    ("hooks-max-age", "DURATION", "how long a failing post-hook is retried before it is dead (24h)"),
    ("hooks-backoff-max", "SECONDS", "longest wait between two delivery attempts (default 300)"),
    ("log-level", "LEVEL", "debug, info, warning or error (default info)"),
    ("log-format", "FORMAT", "text, or json: one object per line with request IDs (default text)"),
    ("metrics-path", "PATH", "where Prometheus scrapes the metrics (default /metrics)"),
    ("disable-metrics", None, "serve no metrics endpoint"),
    ("health-path", "PATH", "prefix of the probes PATH/live and PATH/ready (default /health)"),
    ("admin-path", "PATH", "where the operator page lives (default /admin)"),
    ("admin-token", "SECRET", "token that opens the operator page; without it there is none"),
    ("expire-after", "DURATION", "lifetime of an unfinished upload after its last activity (default 24h)"),
    ("retain-finished", "DURATION", "lifetime of a finished upload, e.g. 30d (default: forever)"),
    ("cleanup-interval", "DURATION", "how often expired uploads are deleted (default 60s; 0 disables)"),
    ("disable-download", None, "refuse GET downloads of finished uploads"),
    ("disable-interim-responses", None, "never send 104 to IETF Resumable Uploads clients (proxies)"),
    ("demo", None, "serve an Uppy upload page at /demo/ (assets shipped in the package)"),
    ("cors-origins", "ORIGINS", "allowed browser origins, comma-separated; * any; none (default *)"),
    ("cors-allow-credentials", None, "allow browsers to send credentials (needs explicit origins)"),
    ("behind-proxy", None, "trust Forwarded / X-Forwarded-Host / X-Forwarded-Proto for upload URLs"),
    ("root-path", "PREFIX", "URL prefix a proxy strips before forwarding, e.g. /uploads (default none)"),
    ("max-metadata-size", "BYTES", "largest Upload-Metadata header accepted (default 16K)"),
    ("fsync", None, "fsync bytes before committing offsets: survives power loss, costs throughput"),
    ("commit-interval", "SECONDS", "commit progress this often during a long PATCH (default 2)"),
    ("network-timeout", "SECONDS", "end a PATCH whose body sends nothing this long, keeping its bytes (60)"),
    ("min-free-space", "SIZE", "free space kept on the data disk: 512M, 1%% or auto = 1%%, >= 64M (auto)"),
    ("database-timeout", "SECONDS", "connect / pool wait / statement time limit before 503 (default 5)"),
    ("database-pool-size", "N", "database connections per process, PostgreSQL (default 20)"),
    ("max-concurrency", "N", "connections and requests at once per process; 503 beyond (default 1000)"),
    ("max-header-size", "BYTES", "largest request line + headers; 431 beyond (default 64K)"),
    ("header-timeout", "SECONDS", "time a client may take to send its request headers (default 20)"),
    ("max-concat-parts", "N", "most partial uploads in one final upload (default 1000)"),
    ("keep-partials", None, "keep partial uploads after a final upload assembled them"),
    ("orphan-grace", "DURATION", "age at which files without a row, rows without a file are reaped (1h)"),
    ("storage", "KIND", "where upload bytes go: local, s3 or s3://bucket/prefix (default local)"),
    ("s3-bucket", "NAME", "bucket of --storage s3"),
    ("s3-prefix", "PREFIX", "key prefix (folder) of every object in the bucket (default none)"),
    ("s3-endpoint-url", "URL", "S3-compatible endpoint: MinIO, R2, B2, Ceph (default AWS)"),
    ("s3-region", "REGION", "region of the bucket (default: AWS configuration chain)"),
    ("s3-part-size", "BYTES", "preferred multipart part size, at least 5M (default 8M)"),
    ("workers", "N", "server processes on this host (default 1)"),
    ("shutdown-timeout", "SECONDS", "on SIGTERM, time given to in-flight requests (default 10)"),
    ("lock-timeout", "SECONDS", "wait for another request on the same upload before 423 (default 10)"),
    ("lock-ttl", "SECONDS", "how long an upload lock outlives a killed process (default 6)"),
    ("hook-timeout", "SECONDS", "time limit of a webhook call and of hooks at shutdown (default 30)"),
]  # fmt: skip
_STORAGE_FLAGS = {
    "data-dir", "database-url", "database-timeout", "log-level", "log-format",
    "storage", "s3-bucket", "s3-prefix", "s3-endpoint-url", "s3-region", "s3-part-size",
}  # fmt: skip


def _flag_help(name: str, text: str) -> str:
    return f"{text}  [env {ENV_PREFIX}{name.upper().replace('-', '_')}]"


def _add_flags(parser: argparse.ArgumentParser, names: set[str] | None = None) -> None:
    for name, metavar, text in _SERVE_FLAGS:
        if names is not None and name not in names:
            continue
        if metavar is None:
            parser.add_argument(f"--{name}", action="store_const", const="true", help=_flag_help(name, text))
        else:
            parser.add_argument(f"--{name}", metavar=metavar, help=_flag_help(name, text))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tusserver",
        description="Resumable uploads over the tus 1.0 protocol, with upload state in SQL.",
        epilog="Run 'tusserver COMMAND --help' for the options of a command.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = commands.add_parser(
        "serve", help="run the server", description="Run the tus server (migrates the database first)."
    )
    _add_flags(serve)
    migrate_cmd = commands.add_parser(
        "migrate", help="bring the database schema up to date",
        description="Apply the database migrations (the server also does this at start-up).",
    )  # fmt: skip
    _add_flags(migrate_cmd, _STORAGE_FLAGS)
    migrate_cmd.add_argument("--revision", default="head", help="target revision (default head)")
    migrate_cmd.add_argument(
        "--downgrade", action="store_true", help="downgrade to --revision instead of upgrading"
    )
    cleanup = commands.add_parser(
        "cleanup", help="delete expired uploads once (for cron)",
        description="Delete every expired upload (rows and bytes) once, then exit.",
    )  # fmt: skip
    _add_flags(cleanup, _STORAGE_FLAGS | {"expire-after", "retain-finished", "orphan-grace"})
    hooks = commands.add_parser(
        "hooks", help="list and retry hook events (the outbox)",
        description="Show durable hook events and deliver failed ones again.",
    )  # fmt: skip
    hook_commands = hooks.add_subparsers(dest="hooks_command", metavar="ACTION", required=True)
    listing = hook_commands.add_parser("list", help="list events: pending by default")
    listing.add_argument("--failed", action="store_true", help="dead events (delivery gave up)")
    listing.add_argument("--pending", action="store_true", help="events waiting for delivery")
    listing.add_argument("--delivered", action="store_true", help="delivered events")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    retry = hook_commands.add_parser("retry", help="deliver an event again, or every dead one")
    retry.add_argument("event_id", nargs="?", help="the event's ID (as `hooks list` shows it)")
    retry.add_argument("--all-failed", action="store_true", help="every dead event")
    for action in (listing, retry):
        _add_flags(action, _STORAGE_FLAGS)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    flags = {
        name.replace("-", "_"): getattr(args, name.replace("-", "_"))
        for name, _, _ in _SERVE_FLAGS
        if getattr(args, name.replace("-", "_"), None) is not None
    }
    return Settings.from_env().with_text_values(flags)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except ValueError as exc:
        print(f"tusserver: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    if args.command == "serve":
        return serve(settings)
    try:
        if args.command == "migrate":
            asyncio.run(_migrate(settings, args.revision, args.downgrade))
            print(f"database at revision {args.revision}")
        elif args.command == "hooks":
            return asyncio.run(_hooks(settings, args))
        else:
            deleted, reaped = asyncio.run(_cleanup(settings))
            print(f"deleted {deleted} expired upload(s), reaped {reaped} orphan(s)")
    except Exception as exc:  # an operator's command: one line, not a traceback
        print(
            f"tusserver: {explain(exc, settings.resolved_database_url, settings.database_timeout)}",
            file=sys.stderr,
        )
        return 1
    return 0


async def _hooks(settings: Settings, args: argparse.Namespace) -> int:
    """`tusserver hooks list|retry`: the outbox, for operators."""
    async with running(settings) as runtime:
        outbox = Outbox(runtime.service.records.runner)
        if args.hooks_command == "retry":
            if bool(args.event_id) == bool(args.all_failed):
                print("tusserver: give an event ID or --all-failed", file=sys.stderr)
                return 2
            count = await outbox.again(args.event_id)
            print(f"{count} event(s) queued for delivery")
            return 0 if count or args.all_failed else 1
        wanted = {"dead": args.failed, "pending": args.pending, "delivered": args.delivered}
        states = [state for state, asked in wanted.items() if asked] or ["pending"]
        for event in await outbox.listing(states, args.limit):
            error = f"  {event.last_error}" if event.last_error else ""
            print(f"{event.id}  {event.state:9}  {event.type:14}  {event.sink:10}  upload {event.upload_id}"
                  f"  attempts {event.attempts}  {event.created_at:%Y-%m-%d %H:%M:%S}{error}")  # fmt: skip
    return 0


async def _cleanup(settings: Settings) -> tuple[int, int]:
    # With the configured hooks: finishing an upload a crash left unfinished (S3) records its
    # post-finish event in the outbox, as a server's sweeper would.
    async with running(settings, build_hooks(settings)) as runtime:
        return await runtime.sweeper.sweep(), await runtime.sweeper.reap_orphans()


async def _migrate(settings: Settings, revision: str, down: bool) -> None:
    engine = make_engine(settings.resolved_database_url)
    try:
        await (downgrade(engine, revision) if down else migrate(engine, revision))
    finally:
        await engine.dispose()


def serve(settings: Settings) -> int:
    """Run uvicorn on the app factory; with several workers each process rebuilds the same settings
    from the environment this writes."""
    export_to_children()  # before uvicorn spawns workers: their glibc reads it at start-up
    tune_malloc()
    try:
        create_app(settings)  # fail here, with a clear message, on a bad hook or database URL
    except ValueError as exc:
        print(f"tusserver: {exc}", file=sys.stderr)
        return 2
    try:
        run_checks(settings)  # port, data directory, database and schema: one line each if wrong
    except StartupProblem as exc:
        print(f"tusserver: {exc}", file=sys.stderr)
        return 1
    os.environ.update(settings.to_env())
    _exit_cleanly_after_shutdown()
    with _metrics_shared_by_workers(settings.workers):
        _run_uvicorn(settings)
    return 0


@contextlib.contextmanager
def _metrics_shared_by_workers(workers: int) -> Iterator[None]:
    """With several workers, each keeps its metrics in files of one fresh directory that a scrape of
    any of them adds up (prometheus-client's multiprocess mode); removed when the server stops. An
    operator's own `PROMETHEUS_MULTIPROC_DIR` is used as it is."""
    if workers <= 1 or metrics.MULTIPROC_ENV in os.environ:
        yield
        return
    directory = tempfile.mkdtemp(prefix="tusserver-metrics-")
    os.environ[metrics.MULTIPROC_ENV] = directory
    try:
        yield
    finally:
        del os.environ[metrics.MULTIPROC_ENV]
        shutil.rmtree(directory, ignore_errors=True)


def _run_uvicorn(settings: Settings) -> None:
    run = run_workers if settings.workers > 1 else uvicorn.run  # a listening socket per worker
    run(
        "tusserver.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,  # never None: uvicorn would then read WEB_CONCURRENCY
        log_level=settings.log_level.lower(),
        server_header=False,
        # uvicorn would otherwise take X-Forwarded-Proto / -For from any client on 127.0.0.1 (its
        # default trust list): the Location scheme and the logged client, without --behind-proxy
        proxy_headers=settings.behind_proxy,
        root_path=settings.root_path.rstrip("/"),
        timeout_graceful_shutdown=int(settings.shutdown_timeout),
        http=InterimHttpToolsProtocol,  # 431 / 408 on request heads (limits from the environment above), 104s
        limit_concurrency=_concurrency_limit(settings.max_concurrency),
        log_config=None,  # the app's own set-up (logs.configure), in every worker
        access_log=False,  # the app logs one `request` line per request (access.py)
    )


def _exit_cleanly_after_shutdown() -> None:
    """uvicorn re-raises the SIGTERM / SIGINT that stopped it once it has shut down, with the handler
    it found; the default one would end the process as killed by the signal (SIGINT: a traceback).
    A handler that does nothing lets `serve` return, and the process exit 0."""
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, _ignore)


def _ignore(number: int, frame: FrameType | None) -> None:
    return None


def _concurrency_limit(connections: int | None) -> int | None:
    """uvicorn's `limit_concurrency` counts the connection asking among those open: N + 1 lets N be
    served at once, the next get 503."""
    return None if connections is None else connections + 1
