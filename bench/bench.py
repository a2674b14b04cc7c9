"""Throughput, latency and memory benchmark for the tusserver tus 1.0 endpoint.

It starts `python -m tusserver serve` on a free localhost port with a throw-away data directory,
drives it with a cheap load generator (raw asyncio streams, hand-written HTTP/1.1 with keep-alive,
every body sliced from one preallocated random buffer; uvloop when importable) and measures:

  a) single stream: one large upload in 8 MiB PATCHes on one connection (after an untimed warm-up)
  b) 32 concurrent uploads, each on its own connection, in 4 MiB PATCHes
  c) POST + HEAD cycles (Upload-Length 1024, no body) from 16 connections for a fixed time
  d) the server's resident memory: VmRSS sampled every 50 ms, VmHWM at the end, and the RSS
     after scenario a) against the RSS after the warm-up (it should not grow with upload size)

Throughput is in MiB/s (2**20 bytes per second); latencies are per request, in milliseconds.

Run from the repository root (the server is started with the repository root as its cwd):

    python bench/bench.py [--quick] [--database-url URL] [--workdir DIR] [--server-env KEY=VALUE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

MIB = 1024 * 1024
PAYLOAD = os.urandom(8 * MIB)
REPO_ROOT = Path(__file__).resolve().parent.parent
REQUEST_TIMEOUT = 120.0  # seconds, for any single request
WRITE_SLICE = 1 * MIB


class BenchError(Exception):
    """The server answered something unexpected (or not at all); aborts the run."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough of the protocol for tus."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: memoryview | None = None
    ) -> Response:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                return await self._exchange(method, path, headers, body)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            await self.close()
            raise BenchError(f"{method} {path}: connection failed: {exc!r}") from exc
        except TimeoutError as exc:
            await self.close()
            raise BenchError(f"{method} {path}: no answer in {REQUEST_TIMEOUT:.0f} s") from exc

    async def _exchange(
        self, method: str, path: str, headers: dict[str, str], body: memoryview | None
    ) -> Response:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        lines = [
            f"{method} {path} HTTP/1.1",
            f"Host: 127.0.0.1:{self.port}",
            "Tus-Resumable: 1.0.0",
        ]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"Content-Length: {0 if body is None else len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if body is not None:
            for start in range(0, len(body), WRITE_SLICE):
                self.writer.write(body[start : start + WRITE_SLICE])
                await self.writer.drain()
        await self.writer.drain()
        response = await self._read_response(self.reader, method)
        if response.headers.get("connection", "").lower() == "close":
            await self.close()
        return response

    @staticmethod
    async def _read_response(reader: asyncio.StreamReader, method: str) -> Response:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status_line, *header_lines = head.split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        body = b""
        if method != "HEAD" and status >= 200 and status not in (204, 304):
            if "content-length" in headers:
                body = await reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                body = await _read_chunked(reader)
        return Response(status, headers, body)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        parts.append((await reader.readexactly(size + 2))[:-2])
    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
        pass
    return b"".join(parts)


def expect(response: Response, status: int, what: str) -> Response:
    if response.status != status:
        detail = response.body[:300].decode("utf-8", "replace")
        raise BenchError(
            f"{what}: expected {status}, got {response.status}; headers {response.headers}; body {detail!r}"
        )
    return response


def expect_offset(response: Response, offset: int, what: str) -> None:
    got = response.headers.get("upload-offset")
    if got != str(offset):
        raise BenchError(f"{what}: expected Upload-Offset {offset}, got {got!r}")


# --- tus requests -----------------------------------------------------------------------------


async def create(conn: Connection, length: int) -> str:
    what = f"POST /files/ (Upload-Length: {length})"
    response = expect(await conn.request("POST", "/files/", {"Upload-Length": str(length)}), 201, what)
    location = response.headers.get("location")
    if not location:
        raise BenchError(f"{what}: 201 without a Location header; headers {response.headers}")
    return urlsplit(location).path


async def append(conn: Connection, path: str, offset: int, size: int) -> float:
    """One PATCH of `size` bytes at `offset`; returns its latency in seconds."""
    headers = {"Content-Type": "application/offset+octet-stream", "Upload-Offset": str(offset)}
    what = f"PATCH {path} (Upload-Offset: {offset}, Content-Length: {size})"
    started = time.perf_counter()
    response = await conn.request("PATCH", path, headers, memoryview(PAYLOAD)[:size])
    elapsed = time.perf_counter() - started
    expect_offset(expect(response, 204, what), offset + size, what)
    return elapsed


async def status(conn: Connection, path: str, offset: int) -> None:
    what = f"HEAD {path}"
    expect_offset(expect(await conn.request("HEAD", path, {}), 200, what), offset, what)


async def upload(conn: Connection, path: str, total: int, chunk: int, latencies: list[float]) -> None:
    for offset in range(0, total, chunk):
        latencies.append(await append(conn, path, offset, min(chunk, total - offset)))


# --- memory sampling --------------------------------------------------------------------------


class RssSampler:
    """Samples the server's VmRSS every 50 ms; keeps the peak overall and since `reset()`."""

    def __init__(self, pid: int) -> None:
        self.status_file = Path(f"/proc/{pid}/status")
        self.peak_kib = 0
        self.window_peak_kib = 0

    def read_kib(self, key: str) -> int:
        try:
            text = self.status_file.read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        return 0

    def sample(self) -> int:
        rss = self.read_kib("VmRSS")
        self.peak_kib = max(self.peak_kib, rss)
        self.window_peak_kib = max(self.window_peak_kib, rss)
        return rss

    def reset(self) -> None:
        self.window_peak_kib = 0
        self.sample()

    def cpu_seconds(self) -> float:
        """The server's user + system CPU time so far."""
        try:
            fields = self.status_file.with_name("stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return math.nan
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.05)


# --- scenarios --------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    mib_per_s: float | None
    requests_per_s: float
    latencies: list[float]
    peak_rss_kib: int
    notes: list[str] = field(default_factory=list)
    cpu_pct: tuple[float, float] = (math.nan, math.nan)
    """Server and client CPU time over the whole scenario, in % of one core."""


def percentile_ms(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)] if ordered else math.nan


@dataclass(frozen=True)
class Plan:
    warmup: int
    single: int
    single_chunk: int
    streams: int
    per_stream: int
    multi_chunk: int
    cycle_conns: int
    cycle_seconds: float

    @classmethod
    def build(cls, quick: bool) -> Plan:
        if quick:
            return cls(16 * MIB, 256 * MIB, 8 * MIB, 32, 8 * MIB, 4 * MIB, 16, 3.0)
        return cls(64 * MIB, 1024 * MIB, 8 * MIB, 32, 32 * MIB, 4 * MIB, 16, 10.0)


async def single_stream(port: int, plan: Plan, rss: RssSampler) -> Result:
    conn = Connection(port)
    try:
        warm_path = await create(conn, plan.warmup)
        await upload(conn, warm_path, plan.warmup, plan.single_chunk, [])
        after_warmup = rss.sample()
        rss.reset()
        path = await create(conn, plan.single)
        latencies: list[float] = []
        started = time.perf_counter()
        await upload(conn, path, plan.single, plan.single_chunk, latencies)
        elapsed = time.perf_counter() - started
        after = rss.sample()
        await status(conn, path, plan.single)
    finally:
        await conn.close()
    name = f"a) 1 x {plan.single // MIB} MiB, {plan.single_chunk // MIB} MiB PATCH"
    note = (
        f"RSS after warm-up ({plan.warmup // MIB} MiB upload): {after_warmup / 1024:.1f} MiB; "
        f"after the {plan.single // MIB} MiB upload: {after / 1024:.1f} MiB "
        f"(delta {(after - after_warmup) / 1024:+.1f} MiB)"
    )
    mib_s, req_s = plan.single / MIB / elapsed, len(latencies) / elapsed
    return Result(name, mib_s, req_s, latencies, rss.window_peak_kib, [note])


async def concurrent_uploads(port: int, plan: Plan, rss: RssSampler) -> Result:
    conns = [Connection(port) for _ in range(plan.streams)]
    latencies: list[float] = []
    try:
        paths = await asyncio.gather(*(create(conn, plan.per_stream) for conn in conns))
        rss.reset()
        started = time.perf_counter()
        await asyncio.gather(
            *(
                upload(c, p, plan.per_stream, plan.multi_chunk, latencies)
                for c, p in zip(conns, paths, strict=True)
            )
        )
        elapsed = time.perf_counter() - started
    finally:
        await asyncio.gather(*(conn.close() for conn in conns))
    total = plan.streams * plan.per_stream
    name = f"b) {plan.streams} x {plan.per_stream // MIB} MiB, {plan.multi_chunk // MIB} MiB PATCH"
    mib_s, req_s = total / MIB / elapsed, len(latencies) / elapsed
    return Result(name, mib_s, req_s, latencies, rss.window_peak_kib)


async def create_status_cycles(port: int, plan: Plan, rss: RssSampler) -> Result:
    post_s: list[float] = []
    head_s: list[float] = []
    deadline = time.perf_counter() + plan.cycle_seconds

    async def worker() -> int:
        conn, cycles = Connection(port), 0
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                path = await create(conn, 1024)
                t1 = time.perf_counter()
                await status(conn, path, 0)
                post_s.append(t1 - t0)
                head_s.append(time.perf_counter() - t1)
                cycles += 1
        finally:
            await conn.close()
        return cycles

    rss.reset()
    started = time.perf_counter()
    cycles = sum(await asyncio.gather(*(worker() for _ in range(plan.cycle_conns))))
    elapsed = time.perf_counter() - started
    p99_post, p99_head = percentile_ms(post_s, 99), percentile_ms(head_s, 99)
    notes = [
        f"POST+HEAD cycles/s: {cycles / elapsed:.0f} ({cycles} cycles in {elapsed:.1f} s); "
        f"p99 POST {p99_post:.1f} ms, p99 HEAD {p99_head:.1f} ms"
    ]
    name = f"c) POST+HEAD, {plan.cycle_conns} conns, {plan.cycle_seconds:g} s"
    return Result(name, None, 2 * cycles / elapsed, post_s + head_s, rss.window_peak_kib, notes)


Scenario = Callable[[int, Plan, RssSampler], Awaitable[Result]]
SCENARIOS: list[Scenario] = [single_stream, concurrent_uploads, create_status_cycles]


async def run_all(
    port: int, proc: subprocess.Popen[bytes], log_path: Path, plan: Plan
) -> tuple[list[Result], int]:
    """All scenarios in order; returns their results and the server's VmHWM (KiB) at the end."""
    rss = RssSampler(proc.pid)
    sampler = asyncio.create_task(rss.run())
    results: list[Result] = []
    try:
        for scenario in SCENARIOS:
            wall, server_cpu, client_cpu = time.perf_counter(), rss.cpu_seconds(), time.process_time()
            try:
                result = await scenario(port, plan, rss)
            except BenchError as exc:
                await asyncio.sleep(0.5)  # let a crashing server finish dying
                if proc.poll() is not None:
                    tail = server_log_tail(log_path)
                    raise BenchError(f"{exc}\nserver died (exit {proc.returncode}):\n{tail}") from exc
                raise
            wall = time.perf_counter() - wall
            server_cpu = rss.cpu_seconds() - server_cpu
            client_cpu = time.process_time() - client_cpu
            result.cpu_pct = (100 * server_cpu / wall, 100 * client_cpu / wall)
            results.append(result)
        return results, rss.read_kib("VmHWM")
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler


# --- server process ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def running_server(args: argparse.Namespace, data_dir: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    serve = f"serve --host 127.0.0.1 --port {port} --log-level warning --data-dir".split()
    command = [sys.executable, "-m", "tusserver", *serve, str(data_dir)]
    if args.database_url:
        command += ["--database-url", args.database_url]
    env = {**os.environ, **dict(item.split("=", 1) for item in args.server_env)}
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(proc, port, log_path)
        yield proc
    finally:
        stop(proc)


def server_log_tail(log_path: Path, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def wait_for_port(proc: subprocess.Popen[bytes], port: int, log_path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(
                f"server exited with {proc.returncode} before listening:\n{server_log_tail(log_path)}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise BenchError(
        f"server did not listen on port {port} within {timeout:.0f} s:\n{server_log_tail(log_path)}"
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


# --- report -----------------------------------------------------------------------------------


def loop_factory() -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, bool]:
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return None, False
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory, True


def format_table(results: list[Result], hwm_kib: int) -> str:
    header = ("scenario", "MiB/s", "req/s", "p50 ms", "p99 ms", "peak RSS MiB", "CPU% srv/cli")
    rows = [header] + [
        (
            r.name,
            "-" if r.mib_per_s is None else f"{r.mib_per_s:.1f}",
            f"{r.requests_per_s:.1f}",
            f"{percentile_ms(r.latencies, 50):.1f}",
            f"{percentile_ms(r.latencies, 99):.1f}",
            f"{r.peak_rss_kib / 1024:.1f}",
            f"{r.cpu_pct[0]:.0f} / {r.cpu_pct[1]:.0f}",
        )
        for r in results
    ]
    overall = max((r.peak_rss_kib for r in results), default=0)
    peaks = f"{overall / 1024:.1f} / {hwm_kib / 1024:.1f}"
    rows.append(("overall (sampled peak / VmHWM)", "", "", "", "", peaks, ""))
    return aligned(rows)


def aligned(rows: Sequence[tuple[str, ...]]) -> str:
    """Aligned columns (first left, others right), a rule under the header row."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="smaller sizes; finishes in under a minute")
    add("--database-url", help="passed to the server (default: SQLite in its data dir)")
    add("--workdir", type=Path, help="parent of the temporary data dir (default: system tmp)")
    add("--server-env", action="append", default=[], metavar="KEY=VALUE",
        help="extra environment variable for the server process (repeatable)")  # fmt: skip
    args = parser.parse_args(argv)
    for item in args.server_env:
        if "=" not in item or item.startswith("="):
            parser.error(f"--server-env wants KEY=VALUE, got {item!r}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan.build(args.quick)
    factory, with_uvloop = loop_factory()
    url = args.database_url
    db_kind = urlsplit(url).scheme.split("+")[0] if url else "sqlite (default, in the data dir)"
    print(f"Python {sys.version.split()[0]}; database: {db_kind}; client uvloop: {with_uvloop}")
    print(f"mode: {'quick' if args.quick else 'full'}; server env: {args.server_env or '-'}")
    tmp = Path(tempfile.mkdtemp(prefix="tusbench-", dir=args.workdir))
    try:
        port = free_port()
        with (
            running_server(args, tmp / "data", port) as proc,
            asyncio.Runner(loop_factory=factory) as runner,
        ):
            results, hwm = runner.run(run_all(port, proc, tmp / "server.log", plan))
    except BenchError as exc:
        print(f"\nBENCHMARK ABORTED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(format_table(results, hwm))
    print("CPU%: CPU time over the whole scenario incl. set-up, 100 = one core busy")
    for result in results:
        for note in result.notes:
            print(f"{result.name.split(')')[0]}) {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
