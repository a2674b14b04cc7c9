"""1 instance vs 3 instances of tusserver behind nginx round-robin, sharing PostgreSQL and a data dir.

For each deployment (1 instance, then 3) it starts `python -m tusserver serve` processes that share
one PostgreSQL database and one data directory, puts nginx in front of them (round-robin, no
affinity, `proxy_request_buffering off`, `client_max_body_size 8m`: `tests/balancer.py`), and
drives nginx with the load generator of `bench/bench.py` (raw asyncio streams, keep-alive,
preallocated payload, uvloop when importable). It measures:

  b) 32 concurrent uploads of 32 MiB (`--quick`: 8 MiB), one connection each, in 4 MiB PATCHes
     (below nginx's 8m body cap): aggregate MiB/s and p50/p99 PATCH latency
  c) POST + HEAD cycles (Upload-Length 1024, no body) from 16 connections for 10 s
     (`--quick`: 3 s): cycles/s and p50/p99 request latency
  d) memory: the instances' VmRSS summed and sampled every 50 ms, and their VmHWM summed at the end

Round-robin means consecutive requests of one upload land on different instances; every status and
`Upload-Offset` is checked, so a run that finishes is also a correctness check of the cluster.

By default each deployment gets a throw-away database `tus_bench_<random>` on
postgresql://postgres@127.0.0.1:5432 (created with asyncpg, dropped at the end); `--database-url`
uses the given PostgreSQL database as-is for both deployments instead. Needs nginx.

Run from the repository root:

    python bench/cluster.py [--quick] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))  # bench/bench.py as module `bench` (bench/ is not a package)
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(1, str(REPO_ROOT))  # tests.balancer, tests.servers

import asyncpg  # noqa: E402

import bench as single  # noqa: E402
from tests.balancer import Balancer, nginx_binary  # noqa: E402
from tests.servers import ServerProcess  # noqa: E402

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEPLOYMENTS = (1, 3)
DEPLOYMENT_TIMEOUT = 900.0  # seconds, for warm-up and both scenarios of one deployment
SERVER_ARGS = ["--log-level", "warning"]  # no access log: it would cost the instances CPU


class GroupSampler(single.RssSampler):
    """`bench.RssSampler` over several processes: VmRSS/VmHWM and CPU time are summed."""

    def __init__(self, pids: Sequence[int]) -> None:
        super().__init__(pids[0])
        self.parts = [single.RssSampler(pid) for pid in pids]

    def read_kib(self, key: str) -> int:
        return sum(part.read_kib(key) for part in self.parts)

    def cpu_seconds(self) -> float:
        return sum(part.cpu_seconds() for part in self.parts)


def with_children(pid: int) -> list[int]:
    """`pid` and its direct children (nginx's worker processes)."""
    with contextlib.suppress(OSError, ValueError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [pid, *map(int, children)]
    return [pid]


# --- one deployment ---------------------------------------------------------------------------


@dataclass
class Measured:
    result: single.Result
    cpu_pct: tuple[float, float, float]
    """Instances, nginx and client CPU time over the scenario, in % of one core."""


@dataclass
class Outcome:
    instances: int
    uploads: Measured
    cycles: Measured
    hwm_kib: int
    served_by: int


@contextlib.contextmanager
def throwaway_database(given: str | None) -> Iterator[str]:
    """`given` as-is, or a fresh `tus_bench_<random>` database that is dropped afterwards."""
    if given:
        yield given
        return
    name = f"tus_bench_{secrets.token_hex(4)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _admin(statement: str) -> None:
    async with asyncio.timeout(30):
        connection = await asyncpg.connect(ADMIN_URL)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()


@contextlib.contextmanager
def deployed(root: Path, database_url: str, count: int) -> Iterator[tuple[list[ServerProcess], Balancer]]:
    """`count` instances on one data dir and database, nginx in front; all stopped on the way out."""
    data_dir = root / "data"
    data_dir.mkdir(parents=True)
    instances = [ServerProcess(data_dir, database_url, extra_args=SERVER_ARGS) for _ in range(count)]
    balancer = Balancer(root / "nginx", instances)
    try:
        for instance in instances:  # one after the other: the first one migrates the schema
            instance.start()
        balancer.start()
        yield instances, balancer
    finally:
        balancer.stop()
        for instance in instances:
            instance.stop()


async def warm_up(port: int, plan: single.Plan) -> None:
    """Untimed: a few uploads and HEADs through nginx so every instance has its pool and code warm."""
    conns = [single.Connection(port) for _ in range(4)]

    async def one(conn: single.Connection) -> None:
        path = await single.create(conn, 2 * plan.multi_chunk)
        await single.upload(conn, path, 2 * plan.multi_chunk, plan.multi_chunk, [])
        await single.status(conn, path, 2 * plan.multi_chunk)

    try:
        await asyncio.gather(*(one(conn) for conn in conns))
    finally:
        await asyncio.gather(*(conn.close() for conn in conns))


async def measure(
    scenario: single.Scenario, port: int, plan: single.Plan, servers: GroupSampler, nginx: GroupSampler
) -> Measured:
    wall, client = time.perf_counter(), time.process_time()
    server_cpu, nginx_cpu = servers.cpu_seconds(), nginx.cpu_seconds()
    result = await scenario(port, plan, servers)
    wall = time.perf_counter() - wall
    cpu = (
        servers.cpu_seconds() - server_cpu,
        nginx.cpu_seconds() - nginx_cpu,
        time.process_time() - client,
    )
    pct = (100 * cpu[0] / wall, 100 * cpu[1] / wall, 100 * cpu[2] / wall)
    return Measured(result, pct)


async def run_deployment(
    instances: list[ServerProcess], balancer: Balancer, plan: single.Plan
) -> tuple[Measured, Measured, int]:
    pids = [i.process.pid for i in instances if i.process is not None]
    servers = GroupSampler(pids)
    assert balancer.process is not None
    nginx = GroupSampler(with_children(balancer.process.pid))
    sampler = asyncio.create_task(servers.run())
    try:
        async with asyncio.timeout(DEPLOYMENT_TIMEOUT):
            await warm_up(balancer.port, plan)
            uploads = await measure(single.concurrent_uploads, balancer.port, plan, servers, nginx)
            cycles = await measure(single.create_status_cycles, balancer.port, plan, servers, nginx)
        return uploads, cycles, servers.read_kib("VmHWM")
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler


def diagnose(exc: Exception, instances: list[ServerProcess], balancer: Balancer) -> str:
    """The error plus the log tail of every instance that died, and nginx's error log."""
    parts = [str(exc)]
    for instance in instances:
        proc = instance.process
        if proc is not None and proc.poll() is not None:
            tail = "\n".join(instance.log().splitlines()[-30:])
            parts.append(f"instance on port {instance.port} died (exit {proc.returncode}):\n{tail}")
    error_log = balancer.root / "error.log"
    if error_log.exists() and (text := error_log.read_text(errors="replace").strip()):
        parts.append("nginx error.log:\n" + "\n".join(text.splitlines()[-20:]))
    return "\n".join(parts)


def bench_deployment(args: argparse.Namespace, workdir: Path, count: int, plan: single.Plan) -> Outcome:
    factory, _ = single.loop_factory()
    root = workdir / f"{count}-instances"
    try:
        with (
            throwaway_database(args.database_url) as url,
            deployed(root, url, count) as (instances, balancer),
            asyncio.Runner(loop_factory=factory) as runner,
        ):
            try:
                uploads, cycles, hwm = runner.run(run_deployment(instances, balancer, plan))
            except (single.BenchError, TimeoutError) as exc:
                time.sleep(0.5)  # let a crashing instance finish dying
                raise single.BenchError(diagnose(exc, instances, balancer)) from exc
            served = len(balancer.served_by())
            if served != count:
                raise single.BenchError(f"nginx sent requests to {served} of {count} instances")
        return Outcome(count, uploads, cycles, hwm, served)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- report -----------------------------------------------------------------------------------


def ratio(values: Sequence[float]) -> str:
    first, last = values[0], values[-1]
    if len(values) < 2 or not first or math.isnan(first) or math.isnan(last):
        return ""
    return f"{last / first:.2f}x"


def format_table(outcomes: list[Outcome], plan: single.Plan) -> str:
    def pct(values: list[float], p: float) -> float:
        return single.percentile_ms(values, p)

    uploads = [o.uploads.result for o in outcomes]
    cycles = [o.cycles.result for o in outcomes]
    numeric: list[tuple[str, list[float], str]] = [
        (
            f"b) {plan.streams} x {plan.per_stream // single.MIB} MiB uploads: aggregate MiB/s",
            [r.mib_per_s or math.nan for r in uploads],
            "{:.1f}",
        ),
        ("   PATCH p50 ms", [pct(r.latencies, 50) for r in uploads], "{:.1f}"),
        ("   PATCH p99 ms", [pct(r.latencies, 99) for r in uploads], "{:.1f}"),
        ("   peak RSS, instances summed, MiB", [r.peak_rss_kib / 1024 for r in uploads], "{:.1f}"),
        (
            f"c) POST+HEAD cycles/s, {plan.cycle_conns} conns, {plan.cycle_seconds:g} s",
            [r.requests_per_s / 2 for r in cycles],
            "{:.0f}",
        ),
        ("   POST/HEAD p50 ms", [pct(r.latencies, 50) for r in cycles], "{:.1f}"),
        ("   POST/HEAD p99 ms", [pct(r.latencies, 99) for r in cycles], "{:.1f}"),
        ("   peak RSS, instances summed, MiB", [r.peak_rss_kib / 1024 for r in cycles], "{:.1f}"),
        ("d) VmHWM of the instances, summed, MiB", [o.hwm_kib / 1024 for o in outcomes], "{:.1f}"),
    ]
    header = ("", *(f"{o.instances} instance{'s' * (o.instances > 1)}" for o in outcomes), "ratio")
    rows: list[tuple[str, ...]] = [header]
    rows += [(name, *(fmt.format(v) for v in values), ratio(values)) for name, values, fmt in numeric]
    for label, picked in (("b", [o.uploads for o in outcomes]), ("c", [o.cycles for o in outcomes])):
        cpu = [" / ".join(f"{c:.0f}" for c in m.cpu_pct) for m in picked]
        rows.append((f"{label}) CPU% instances / nginx / client", *cpu, ""))
    return single.aligned(rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="8 MiB uploads and 3 s of POST+HEAD")
    parser.add_argument(
        "--database-url",
        help="PostgreSQL database used as-is by both deployments "
        f"(default: a throw-away database per deployment on {ADMIN_URL.rsplit('/', 1)[0]})",
    )
    return parser.parse_args(argv)


def nginx_version() -> str:
    with contextlib.suppress(OSError, RuntimeError, subprocess.SubprocessError):
        done = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True, timeout=10)
        return done.stderr.strip().rpartition("/")[2] or "?"
    return "?"


def interrupt(signum: int, frame: object) -> None:
    """SIGTERM: unwind like Ctrl-C, so that every process is stopped and every temp dir removed.

    Later SIGTERMs are ignored: `timeout` or a process-group kill may deliver a second one, which
    would otherwise interrupt the clean-up itself.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    plan = single.Plan.build(args.quick)
    _, with_uvloop = single.loop_factory()
    database = args.database_url or "throw-away PostgreSQL database per deployment"
    print(
        f"Python {sys.version.split()[0]}; nginx {nginx_version()}; {os.cpu_count()} CPU cores; "
        f"client uvloop: {with_uvloop}; mode: {'quick' if args.quick else 'full'}; database: {database}"
    )
    outcomes: list[Outcome] = []
    workdir = Path(tempfile.mkdtemp(prefix="tusbench-cluster-"))
    try:
        for count in DEPLOYMENTS:
            outcomes.append(bench_deployment(args, workdir, count, plan))
    except (single.BenchError, OSError, RuntimeError, TimeoutError, asyncpg.PostgresError) as exc:
        # also: an instance or nginx that did not start, PostgreSQL not reachable
        detail = str(exc) if isinstance(exc, single.BenchError) else repr(exc)
        print(f"\nBENCHMARK ABORTED: {detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(format_table(outcomes, plan))
    print(
        "CPU%: CPU time over the scenario, 100 = one core busy; ratio: 3 instances / 1 instance. "
        "Every status and Upload-Offset was checked; round-robin spread requests over all instances."
    )
    print(
        f"On this {os.cpu_count()}-core machine the instances, nginx and the load generator share the "
        "cores, so 3 instances cannot beat 1 by CPU: the point is that they are correct and do not lose "
        "throughput to coordination (shared PostgreSQL, shared data dir, no sticky sessions)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
