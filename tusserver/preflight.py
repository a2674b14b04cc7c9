"""Start-up checks: every misconfiguration an operator can make at start-up becomes one line that
names it, instead of a traceback or a server that starts and fails on the first request.

`check(settings)` runs before the server listens: the port is free, the data directory can be
written, the SQLite library is new enough, the database can be reached with these credentials and its
schema is one this release knows, and an S3 bucket can be listed. A problem raises `StartupProblem`
with the line to print; `explain` turns an exception met later at start-up (a `migrate` or `cleanup`
command) into the same kind of line.

A schema that needs migrating is migrated by `run_checks` in a forked child process: Alembic (with
Mako and Pygments, about 11 MiB resident) is then never loaded into the serving process, which only
reads the recorded revision (`database.schema_revision`).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import sqlite3
import sys
from pathlib import Path

from sqlalchemy.engine import make_url

from tusserver.config import Settings
from tusserver.database import SCHEMA_HEAD, make_engine, migrate, schema_revision
from tusserver.statements import sqlite_library_problem
from tusserver.storage import storage_problem


class StartupProblem(Exception):
    """A reason the server cannot start, as one line for the operator."""


async def check(settings: Settings) -> bool:
    """Every check; returns whether the database schema must be migrated."""
    check_port(settings.host, settings.port)
    check_data_directory(settings.uploads_dir)
    if (problem := await storage_problem(settings)) is not None:
        raise StartupProblem(problem)
    return await check_database(settings)


def check_port(host: str, port: int) -> None:
    """Bind and release the address uvicorn will listen on, to name a taken port before it tries."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn picks it
    try:
        with socket.create_server((host, port), family=family) as _:
            pass
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise StartupProblem(f"port {port} on {host} is already in use by another process") from None
        if exc.errno == errno.EACCES:
            raise StartupProblem(f"no permission to listen on port {port} on {host}") from None
        raise StartupProblem(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def check_data_directory(directory: Path) -> None:
    """Create the uploads directory if needed and make sure files can be created in it."""
    probe = directory / ".tusserver-write-test"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StartupProblem(
            f"data directory {directory.parent} is not usable: {exc.strerror or exc} ({exc.filename})"
        ) from None


async def check_database(settings: Settings) -> bool:
    """The database can be reached and read; returns whether its schema is behind this release (or
    ahead of it: the migration then names the problem)."""
    url = settings.resolved_database_url
    if url.startswith("sqlite") and (problem := sqlite_library_problem()) is not None:
        raise StartupProblem(problem)
    try:
        engine = make_engine(url, settings.fsync, settings.database_timeout)
    except ValueError as exc:
        raise StartupProblem(str(exc)) from None
    try:
        return await schema_revision(engine) != SCHEMA_HEAD
    except Exception as exc:
        raise StartupProblem(explain(exc, url, settings.database_timeout)) from None
    finally:
        await engine.dispose()


async def migrate_database(settings: Settings) -> str | None:
    """Bring the schema to this release's head: None, or the line that says why it could not."""
    url = settings.resolved_database_url
    engine = make_engine(url, settings.fsync, settings.database_timeout)
    try:
        await migrate(engine)
    except Exception as exc:
        return explain(exc, url, settings.database_timeout)
    finally:
        await engine.dispose()
    return None


def explain(exc: BaseException, url: str, timeout: float) -> str:
    """One line for an exception met while connecting to or migrating the database at `url`."""
    import asyncpg  # imported here, on a failure: a server on SQLite never needs them
    from alembic.util.exc import CommandError

    shown = make_url(url)
    where = f"{shown.host or 'localhost'}:{shown.port or 5432}"
    for cause in _chain(exc):
        if isinstance(cause, asyncpg.InvalidPasswordError):
            return f"the database at {where} refused the password of user {shown.username!r}"
        if isinstance(cause, asyncpg.InvalidAuthorizationSpecificationError):
            return f"the database at {where} refused user {shown.username!r}: {cause}"
        if isinstance(cause, asyncpg.InvalidCatalogNameError):
            return f"database {shown.database!r} does not exist at {where}"
        if isinstance(cause, CommandError) and "Can't locate revision" in str(cause):
            return (
                "the database schema is newer than this release of tusserver (it was migrated by a "
                f"later version: {cause}); run that version, or a newer one"
            )
        if isinstance(cause, sqlite3.Error):
            return f"cannot use the SQLite database {shown.database}: {cause}"
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve the database host {shown.host!r}: {cause.strerror}"
        if isinstance(cause, TimeoutError):
            return f"the database at {where} did not answer within {timeout:g} s"
        if isinstance(cause, OSError):
            reason = os.strerror(cause.errno) if cause.errno else str(cause)
            return f"cannot reach the database at {where}: {reason}"
    return f"the database at {shown.render_as_string(hide_password=True)} failed: {exc}"


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc`, what it wraps (`orig` of SQLAlchemy errors) and what caused it, outermost first."""
    seen: list[BaseException] = []
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop(0)
        if current is None or any(current is known for known in seen):
            continue
        seen.append(current)
        pending += [getattr(current, "orig", None), current.__cause__, current.__context__]
    return seen


def run_checks(settings: Settings) -> None:
    """`check` from synchronous code (the command line, before uvicorn starts its own loop), then the
    migration if one is needed, in a child process where the system can fork."""
    if not asyncio.run(check(settings)):
        return
    problem = _in_child(settings) if hasattr(os, "fork") else asyncio.run(migrate_database(settings))
    if problem is not None:
        raise StartupProblem(problem)


def _in_child(settings: Settings) -> str | None:
    """`migrate_database` in a forked child (no event loop runs here now); its line comes back
    through a pipe."""
    reading, writing = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's exit handlers
        os.close(reading)
        try:
            problem = asyncio.run(migrate_database(settings))
        except BaseException as exc:  # whatever happens, the parent must hear of it
            problem = f"the database migration failed: {exc}"
        sys.stdout.flush()
        sys.stderr.flush()
        os.write(writing, (problem or "").encode())
        os._exit(1 if problem else 0)
    os.close(writing)
    with os.fdopen(reading, "rb") as answer:
        line = answer.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        return None
    return line or "the database migration failed (its process ended without saying why)"
