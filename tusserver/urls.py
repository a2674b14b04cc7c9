"""The public base URL of the server, from which upload `Location`s are built.

Without `behind_proxy`, it is the scheme and Host the request arrived with, plus the ASGI `root_path`
(uvicorn `--root-path`, or a mount point). With it, `Forwarded` (RFC 7239, first element) or else
`X-Forwarded-Host` / `X-Forwarded-Proto` replace them; only `http` and `https` are accepted as
protocols, and default ports are dropped. Pure functions; no framework.
"""

from __future__ import annotations

from collections.abc import Mapping

_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def public_base(
    scheme: str, host: str, root_path: str, headers: Mapping[str, str], behind_proxy: bool
) -> str:
    """`scheme://host/root_path` with no trailing slash."""
    if behind_proxy:
        forwarded_host, forwarded_proto = _forwarded(headers)
        host = forwarded_host or host
        scheme = forwarded_proto or scheme
    port = _DEFAULT_PORTS.get(scheme)
    if port and host.endswith(port):
        host = host[: -len(port)]
    return f"{scheme}://{host}{root_path.rstrip('/')}"


def _forwarded(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    host = proto = None
    forwarded = headers.get("forwarded")
    if forwarded:
        for pair in forwarded.split(",", 1)[0].split(";"):
            key, _, value = pair.strip().partition("=")
            value = value.strip().strip('"')
            if key.lower() == "host" and value:
                host = value
            elif key.lower() == "proto" and value:
                proto = value.lower()
    host = host or _first(headers.get("x-forwarded-host"))
    proto = proto or (_first(headers.get("x-forwarded-proto")) or "").lower() or None
    if proto not in {"http", "https"}:
        proto = None
    if host is not None and not _plausible_host(host):
        host = None
    return host, proto


def _first(value: str | None) -> str | None:
    return value.split(",", 1)[0].strip() or None if value else None


def _plausible_host(host: str) -> bool:
    """A host[:port] without anything that could change the URL's meaning."""
    return all(char.isalnum() or char in ".-:[]_" for char in host)
