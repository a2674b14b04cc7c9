"""A PostgreSQL cluster of the test's own (initdb + pg_ctl on a spare loopback port), so that a test
can stop and start the database under a running server without touching the shared one."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.servers import free_port


def _binary(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} not found under /usr/lib/postgresql/*/bin")
    return found[-1]


def _as_postgres(*command: str) -> list[str]:
    """PostgreSQL refuses to run as root; run as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


class PostgresCluster:
    def __init__(self, password: str | None = None) -> None:
        """With `password`, connections must give it (scram-sha-256); else trust."""
        self.port = free_port()
        self.password = password
        self.directory = Path(tempfile.mkdtemp(prefix="tusserver-pg-"))
        self.data = self.directory / "data"
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres")
        auth = ["--auth=trust"]
        if password is not None:
            secret = self.directory / "password"
            secret.write_text(password)
            if os.geteuid() == 0:
                shutil.chown(secret, "postgres")
            auth = ["--auth=scram-sha-256", f"--pwfile={secret}"]
        self._run(_binary("initdb"), "-D", str(self.data), "-U", "postgres", *auth, "-E", "UTF8")

    @property
    def url(self) -> str:
        credentials = "postgres" if self.password is None else f"postgres:{self.password}"
        return f"postgresql://{credentials}@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        subprocess.run(_as_postgres(*command), check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.directory}"
        log = str(self.directory / "postgres.log")
        self._run(
            _binary("pg_ctl"), "-D", str(self.data), "-o", options, "-l", log, "-w", "-t", "60", "start"
        )

    def stop(self) -> None:
        self._run(_binary("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        subprocess.run(_as_postgres(_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"),
                       capture_output=True, timeout=60)  # fmt: skip
        shutil.rmtree(self.directory, ignore_errors=True)
