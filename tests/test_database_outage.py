"""While PostgreSQL is unreachable: 503 with Retry-After, never 500; nothing committed is lost; the
server recovers by itself when the database is back (issue 4, database trouble)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.pgcluster import PostgresCluster
from tests.servers import ServerProcess

pytestmark = pytest.mark.postgresql
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {**TUS, "Content-Type": "application/offset+octet-stream"}


def test_database_outage_gives_503_then_recovers(cluster: PostgresCluster, tmp_path: Path) -> None:
    server = ServerProcess(data_dir=tmp_path / "data", database_url=cluster.url)
    server.start()
    try:
        created = httpx.post(server.url, headers={**TUS, "Upload-Length": "10"})
        url = created.headers["Location"]
        assert httpx.patch(url, content=b"01234", headers={**OCTETS, "Upload-Offset": "0"}).status_code == 204
        cluster.stop()
        for response in (
            httpx.head(url, headers=TUS),
            httpx.post(server.url, headers={**TUS, "Upload-Length": "10"}),
            httpx.patch(url, content=b"56789", headers={**OCTETS, "Upload-Offset": "5"}),
            httpx.delete(url, headers=TUS),
        ):
            assert response.status_code == 503, (response.request.method, response.status_code, response.text)
            assert response.headers["Retry-After"].isdigit()
            assert "Traceback" not in response.text
        cluster.start()
        statuses = [httpx.head(url, headers=TUS).status_code for _ in range(3)]
        assert statuses[-1] == 200  # at most the first request after the restart meets a dead connection
        assert httpx.head(url, headers=TUS).headers["Upload-Offset"] == "5"  # nothing committed was lost
        done = httpx.patch(url, content=b"56789", headers={**OCTETS, "Upload-Offset": "5"})
        assert done.status_code == 204
        assert (server.data_dir / "uploads" / url.rsplit("/", 1)[1]).read_bytes() == b"0123456789"
    finally:
        server.stop()
    assert "Traceback" not in server.log()
