"""`--workers N`: several server processes on one port, each with a listening socket of its own.

uvicorn's supervisor binds one socket and hands it to every worker, so all of them accept from one
queue, and whichever loop wakes first takes what is waiting: a burst of connections (16 clients
starting together) mostly lands on one worker while the other idles. On Linux each worker here
listens on a socket of its own, bound to the same address with `SO_REUSEPORT`, and the kernel
spreads new connections over them by their address hash. The supervisor, its restarts and signal
handling stay uvicorn's: the supervisor holds a bound socket that never listens, and each worker,
unpickling that socket when uvicorn starts it, opens its own instead (`WorkerSocket.__reduce__`).
The supervisor's socket has `SO_REUSEPORT` but not `SO_REUSEADDR`, so no other program can bind the
port meanwhile (`SO_REUSEADDR` would let one that sets it too), while the workers, and the
supervisor's next start despite connections in TIME_WAIT, can. A worker that cannot bind anyway
exits as a start-up failure, which stops the supervisor instead of restarting the worker forever.
Elsewhere than Linux, where `SO_REUSEPORT` does not spread connections, the workers share uvicorn's
one socket as before.

What a socket per worker costs: a listener that closes resets the connections still waiting in its
own queue (a worker that dies or is replaced: SIGHUP, SIGTTOU), where the shared queue kept them
for the others; Linux moves them to another worker with `sysctl net.ipv4.tcp_migrate_req=1`. And
any process of the same user that sets `SO_REUSEPORT` could join the port.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

log = logging.getLogger("uvicorn.error")  # where uvicorn says the same for its own socket
SPREADS_CONNECTIONS = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


class WorkerSocket(socket.socket):
    """The supervisor's socket: bound with `SO_REUSEPORT`, never listening; in each worker
    process it becomes a fresh socket bound to the same address (see the module docstring)."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_own_socket, (self.family, self.getsockname()))

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return self.__reduce__()


def _bound(family: socket.AddressFamily, address: Any, kind: type[socket.socket]) -> socket.socket:
    sock = kind(family=family, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _own_socket(family: socket.AddressFamily, address: Any) -> socket.socket:
    """In a worker: its own socket on the supervisor's address (uvicorn makes it listen). Failing
    that, the worker exits as a start-up failure, with one line."""
    try:
        return _bound(family, address, socket.socket)
    except OSError as exc:
        print(f"tusserver: a worker cannot listen on {address[0]}:{address[1]}: {exc}", file=sys.stderr)
        sys.exit(STARTUP_FAILURE)


class SpreadingConfig(uvicorn.Config):
    """uvicorn's configuration, binding a `WorkerSocket` for its supervisor."""

    def bind_socket(self) -> socket.socket:
        family = socket.AF_INET6 if self.host and ":" in self.host else socket.AF_INET
        try:
            sock = _bound(family, (self.host, self.port), WorkerSocket)
        except OSError as exc:  # taken since the start-up check: one line, as uvicorn says it
            log.error("%s", exc)
            sys.exit(STARTUP_FAILURE)
        host = f"[{self.host}]" if family == socket.AF_INET6 else self.host
        log.info("Uvicorn running on http://%s:%d (Press CTRL+C to quit)", host, sock.getsockname()[1])
        return sock


def run_workers(app: str, **options: Any) -> None:
    """`uvicorn.run(app, workers=N, **options)` with a listening socket per worker on Linux."""
    if not SPREADS_CONNECTIONS:
        uvicorn.run(app, **options)
        return
    config = SpreadingConfig(app, **options)
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run
        supervisor.run()
    if any(worker.process.exitcode == STARTUP_FAILURE for worker in supervisor.processes):
        sys.exit(STARTUP_FAILURE)  # uvicorn's supervisor stopped because a worker could not start
