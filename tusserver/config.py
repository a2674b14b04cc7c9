"""Server configuration: one frozen `Settings`, built at start-up and passed explicitly.

Each field has a default, a unit in its name or docstring, and an environment variable
`TUSSERVER_<FIELD>` (the CLI flags in `cli.py` mirror the same names). Nothing is read at import time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "TUSSERVER_"
_SIZE = re.compile(r"(?P<number>[0-9]+)\s*(?P<unit>[kmgt]?i?b?)", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_byte_size(text: str) -> int:
    """`1073741824`, `512M`, `10GiB` -> bytes (binary units)."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"not a size in bytes: {text!r} (examples: 1048576, 512M, 10G)")
    unit = match["unit"].lower().rstrip("b").rstrip("i")
    return int(match["number"]) * _UNITS[unit]


def normalize_base_path(path: str) -> str:
    """The tus endpoint path with exactly one leading and one trailing slash."""
    stripped = path.strip("/")
    return f"/{stripped}/" if stripped else "/"


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 1080
    base_path: str = "/files/"
    """Where the tus endpoint lives; `/files` and `/files/` both work."""
    data_dir: Path = Path("data")
    """Upload bytes go to `<data_dir>/uploads/`; the default SQLite database is `<data_dir>/tusserver.db`."""
    database_url: str | None = None
    """SQLAlchemy URL; `postgresql://...` and `sqlite:///...` are accepted as they are. None: SQLite."""
    max_size: int | None = None
    """Largest `Upload-Length` accepted, in bytes; None for no limit."""
    on_finish: str | None = None
    """`package.module:function` called once per finished upload (sync or async)."""
    webhook_url: str | None = None
    """URL that receives a JSON POST once per finished upload."""
    log_level: str = "info"
    log_format: str = "text"
    """`text` (readable lines) or `json` (one object per line, with the request ID)."""
    metrics_path: str = "/metrics"
    """Where Prometheus scrapes the metrics."""
    disable_metrics: bool = False
    """Serve no metrics endpoint."""
    health_path: str = "/health"
    """Prefix of the probes: `<health_path>/live` and `<health_path>/ready`."""
    admin_path: str = "/admin"
    """Where the operator page lives (only with `admin_token`)."""
    admin_token: str | None = None
    """Secret that opens the operator page (bearer header or login form); None: no operator page."""
    lock_timeout: float = 10.0
    """Seconds a request waits for another request on the same upload before answering 423."""
    lock_ttl: float = 6.0
    """Seconds a lock stays valid without renewal; bounds how long a killed process blocks an upload."""
    hook_timeout: float = 30.0
    """Seconds a webhook delivery may take before it is abandoned and logged."""
    fsync: bool = False
    """fsync upload bytes before committing an offset that covers them (survives power loss; slower)."""
    commit_interval: float = 2.0
    """Seconds between offset commits while one long PATCH streams: the most a crash can lose."""
    workers: int = 1
    """Server processes on this host (uvicorn workers); they share the database and data directory."""
    shutdown_timeout: float = 10.0
    """Seconds a stopping server gives in-flight requests to finish (they are asked to end early)."""
    expire_after: float | None = 24 * 3600.0
    """Seconds an unfinished upload lives after its last activity; None: never expires."""
    retain_finished: float | None = None
    """Seconds a finished upload is kept after completion; None: until deleted."""
    cleanup_interval: float = 60.0
    """Seconds between two sweeps of expired uploads by the in-server sweeper; 0 disables it."""
    disable_download: bool = False
    """Refuse GET on uploads (405); by default a finished upload can be downloaded."""
    cors_origins: str = "*"
    """Comma-separated origins allowed to use the server from a browser; `*` for any, empty for none."""
    cors_allow_credentials: bool = False
    """Let browsers send cookies/credentials (requires explicit origins, never `*`)."""
    behind_proxy: bool = False
    """Trust Forwarded / X-Forwarded-Host / X-Forwarded-Proto when building upload URLs."""
    root_path: str = ""
    """URL prefix a proxy strips before forwarding (e.g. `/uploads`); it is put back into upload URLs."""
    max_metadata_size: int = 16 * 1024
    """Largest `Upload-Metadata` header accepted, in bytes (413 beyond it)."""
    network_timeout: float = 60.0
    """Seconds a request body may send nothing before what arrived is committed and the request ends."""
    min_free_space: str = "auto"
    """Free space kept on the data directory's file system: bytes (`512M`), a share (`1%`), or `auto`
    (1 %, at least 64 MiB). New bytes beyond it get 507, so the database and DELETE keep working."""
    hooks_python: str | None = None
    """`package.module:object` whose methods named after events (`pre_create`, `post_finish`, ...)
    receive them."""
    hooks_http: str | None = None
    """URL that receives tusd v2 HTTP hooks (blocking pre-hooks and durable post-hooks)."""
    hooks_enabled_events: str = "pre-create,post-create,post-receive,post-terminate,post-finish"
    """Comma-separated hook events sent to `hooks_http` (tusd's default set; add `pre-access`,
    `pre-finish`, `pre-terminate` as needed)."""
    hooks_http_timeout: float | None = None
    """Seconds one `hooks_http` call may take (tusd's `-hooks-http-timeout`); default `hook_timeout`."""
    hooks_http_forward_headers: str = ""
    """Comma-separated request headers copied onto each hook request."""
    hooks_secret: str | None = None
    """Key of the HMAC-SHA256 signature every hook request carries (`Tusserver-Signature`)."""
    progress_interval: float = 1.0
    """Seconds between two post-receive hooks of one upload, at most."""
    hooks_max_age: float = 24 * 3600.0
    """Seconds a durable hook event is retried before it is marked dead."""
    hooks_backoff_max: float = 300.0
    """Longest wait, in seconds, between two delivery attempts of one event."""
    disable_interim_responses: bool = False
    """Never send `104 (Upload Resumption Supported)` (IETF Resumable Uploads), e.g. behind a proxy
    that mistakes an interim response for the final one."""
    demo: bool = False
    """Serve a small upload page (Uppy Dashboard, shipped with the package) at `/demo/`."""
    database_timeout: float = 5.0
    """Seconds to connect to the database, to wait for a pooled connection, or to run one statement,
    before the request answers 503 + Retry-After (a blackholed database never hangs a request)."""
    database_pool_size: int = 20
    """Database connections per server process (PostgreSQL); more requests wait up to `database_timeout`."""
    max_concurrency: int | None = 1000
    """Connections and requests served at once per process; beyond it new ones get 503. None: no cap."""
    max_header_size: int = 64 * 1024
    """Largest request line plus header block accepted, in bytes (431 beyond it)."""
    header_timeout: float = 20.0
    """Seconds a client may take to send a request's line and headers (408 and close beyond it)."""
    max_concat_parts: int = 1000
    """Most partial uploads one final upload may name (repeats count); 400 beyond it."""
    keep_partials: bool = False
    """Keep partial uploads after a final upload assembled them; by default they are deleted."""
    orphan_grace: float = 3600.0
    """Seconds a stored file without an upload row (or a row whose file is gone) is left alone before
    the sweeper reaps it: leaves room for requests creating or assembling one right now."""

    storage: str = "local"
    """Where upload bytes go: `local` (`<data_dir>/uploads/`), `s3`, or `s3://bucket/prefix`."""
    s3_bucket: str | None = None
    """Bucket of `--storage s3`."""
    s3_prefix: str = ""
    """Key prefix (a folder) for every object of `--storage s3`."""
    s3_endpoint_url: str | None = None
    """S3-compatible endpoint (MinIO, R2, B2, Ceph); None: AWS S3 of `s3_region`."""
    s3_region: str | None = None
    """Region of the bucket; None: from the AWS configuration chain."""
    s3_part_size: int = 8 * 1024 * 1024
    """Preferred multipart part size in bytes (at least 5 MiB; larger when an upload needs it)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_path", normalize_base_path(self.base_path))
        for name in ("metrics_path", "health_path", "admin_path"):
            object.__setattr__(self, name, _url_path(getattr(self, name)))
        object.__setattr__(self, "data_dir", Path(self.data_dir))

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'tusserver.db'}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings with every `TUSSERVER_*` variable of `environ` (default: os.environ) applied."""
        env = os.environ if environ is None else environ
        changes = {
            name: env[ENV_PREFIX + name.upper()]
            for name in _FIELD_PARSERS
            if env.get(ENV_PREFIX + name.upper(), "") != ""
        }
        return cls().with_text_values(changes)

    def to_env(self) -> dict[str, str]:
        """These settings as `TUSSERVER_*` variables, so that worker processes rebuild them exactly."""
        env = {}
        for name in _FIELD_PARSERS:
            value = getattr(self, name)
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif value is None:
                value = "none" if name in _NONE_MEANS_UNSET else ""
            env[ENV_PREFIX + name.upper()] = str(value)
        return env

    def with_text_values(self, values: Mapping[str, str]) -> Settings:
        """A copy with fields set from text (environment or command line), parsed per field."""
        try:
            parsed: dict[str, Any] = {name: _FIELD_PARSERS[name](text) for name, text in values.items()}
        except ValueError as exc:
            raise ValueError(f"bad setting: {exc}") from None
        return replace(self, **parsed)


_NONE = {"", "0", "none", "never", "unlimited", "off"}
_NONE_MEANS_UNSET = {"max_size", "expire_after", "retain_finished", "max_concurrency"}
_DURATION = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[smhd]?)", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """`90`, `90s`, `30m`, `24h`, `7d` -> seconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise ValueError(f"not a duration: {text!r} (examples: 3600, 30m, 24h, 7d)")
    return float(match["number"]) * _SECONDS[match["unit"].lower()]


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {text!r} (use true or false)")


def _optional_size(text: str) -> int | None:
    return None if text.strip().lower() in _NONE else parse_byte_size(text)


def _optional_duration(text: str) -> float | None:
    return None if text.strip().lower() in _NONE else parse_duration(text)


def _free_space(text: str) -> str:
    """`auto`, `N%` or a byte size; checked here, turned into bytes by the storage (it knows the disk)."""
    value = text.strip().lower()
    if value == "auto" or re.fullmatch(r"[0-9]+(\.[0-9]+)?\s*%", value):
        return value
    parse_byte_size(value)
    return value


def _log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in {"text", "json"}:
        raise ValueError(f"not a log format: {text!r} (use text or json)")
    return value


def _url_path(text: str) -> str:
    """`/metrics`, `metrics/` -> `/metrics`: one leading slash, none trailing."""
    value = "/" + text.strip().strip("/")
    if value == "/":
        raise ValueError(f"not a path for an endpoint of its own: {text!r}")
    return value


def _storage_kind(text: str) -> str:
    value = text.strip()
    if value in {"local", "s3"} or value.startswith("s3://"):
        return value
    raise ValueError(f"not a storage: {text!r} (local, s3 or s3://bucket/prefix)")


_FIELD_PARSERS: dict[str, Callable[[str], object]] = {
    "host": str,
    "port": int,
    "base_path": str,
    "data_dir": Path,
    "database_url": str,
    "max_size": _optional_size,
    "on_finish": str,
    "webhook_url": str,
    "log_level": str,
    "log_format": _log_format,
    "metrics_path": _url_path,
    "disable_metrics": parse_bool,
    "health_path": _url_path,
    "admin_path": _url_path,
    "admin_token": str,
    "lock_timeout": float,
    "lock_ttl": float,
    "hook_timeout": float,
    "expire_after": _optional_duration,
    "retain_finished": _optional_duration,
    "cleanup_interval": parse_duration,
    "disable_download": parse_bool,
    "demo": parse_bool,
    "disable_interim_responses": parse_bool,
    "cors_origins": str,
    "cors_allow_credentials": parse_bool,
    "behind_proxy": parse_bool,
    "max_metadata_size": parse_byte_size,
    "root_path": str,
    "workers": int,
    "fsync": parse_bool,
    "commit_interval": parse_duration,
    "shutdown_timeout": float,
    "network_timeout": parse_duration,
    "min_free_space": _free_space,
    "hooks_python": str,
    "hooks_http": str,
    "hooks_enabled_events": str,
    "hooks_http_timeout": parse_duration,
    "hooks_http_forward_headers": str,
    "hooks_secret": str,
    "progress_interval": parse_duration,
    "hooks_max_age": parse_duration,
    "hooks_backoff_max": parse_duration,
    "database_timeout": parse_duration,
    "database_pool_size": int,
    "max_concurrency": lambda text: None if text.strip().lower() in _NONE else int(text),
    "max_header_size": parse_byte_size,
    "header_timeout": parse_duration,
    "max_concat_parts": int,
    "keep_partials": parse_bool,
    "orphan_grace": parse_duration,
    "storage": _storage_kind,
    "s3_bucket": str,
    "s3_prefix": str,
    "s3_endpoint_url": str,
    "s3_region": str,
    "s3_part_size": parse_byte_size,
}
assert set(_FIELD_PARSERS) <= {f.name for f in fields(Settings)}
