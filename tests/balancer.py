"""nginx (the Debian package) as a round-robin load balancer with no affinity in front of several
`tusserver serve` processes that share one database and one data directory, all on loopback ports.

The nginx settings are the ones the README recommends for uploads: no request buffering and a low
`client_max_body_size`, as an ingress that caps request size would have.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from tests.servers import ServerProcess, free_port, wait_for_port

NGINX_CONF = """\
{user}worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format upstreams '$request_method $status $upstream_addr $request_time';
    access_log {root}/access.log upstreams;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;

    upstream tusserver {{
{servers}
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 8m;
        location / {{
            proxy_pass http://tusserver;
            proxy_http_version 1.1;
            proxy_request_buffering off;
            proxy_buffering off;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_next_upstream error timeout;
            proxy_read_timeout 120s;
            proxy_send_timeout 120s;
        }}
    }}
}}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        raise RuntimeError("nginx is not installed (Debian: apt-get install nginx-light)")
    return found


class Balancer:
    """nginx on a free port, round-robin over `instances` (no stickiness)."""

    def __init__(self, root: Path, instances: list[ServerProcess]) -> None:
        self.root = root
        self.instances = instances
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/files/"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        servers = "\n".join(f"        server 127.0.0.1:{i.port} max_fails=0;" for i in self.instances)
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = NGINX_CONF.format(user=user, root=self.root, servers=servers, port=self.port)
        (self.root / "nginx.conf").write_text(conf)
        command = [
            nginx_binary(),
            "-p",
            str(self.root),
            "-c",
            str(self.root / "nginx.conf"),
            "-g",
            "daemon off;",
        ]
        log = (self.root / "nginx.out").open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=log)
        log.close()
        wait_for_port(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def served_by(self) -> set[int]:
        """Upstream ports that answered at least one request (from nginx's access log)."""
        return {instance.port for instance in self.instances if f":{instance.port}" in self.upstream_log()}

    def upstream_log(self) -> str:
        return (self.root / "access.log").read_text() if (self.root / "access.log").exists() else ""


def kill_9_chaos(instances: Sequence[ServerProcess], done: threading.Event, seed: int, every: float) -> None:
    """A bounded loop (6 rounds, 40 s at most, until `done`): kill -9 a random instance every
    `every` seconds and start it again half a second later."""
    rng = random.Random(seed)
    deadline = time.monotonic() + 40
    for _ in range(6):
        if done.wait(every) or time.monotonic() > deadline:
            return
        victim = rng.choice(instances)
        victim.kill()
        time.sleep(0.5)
        victim.start()
