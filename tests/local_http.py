"""Serve a folder over HTTP on 127.0.0.1 for tests (no network beyond this machine).

    from local_http import serve_directory

    with serve_directory(tmp_path, truncate={"big.zip": 100}) as base_url:
        url = base_url + "file.zip"     # served normally
        bad = base_url + "big.zip"      # advertises the full Content-Length, sends 100 bytes, hangs up
        base_url.hits["file.zip"]       # how many GET/HEAD requests each path received

``base_url`` is a ``str`` (ending in ``/``) with a ``hits`` counter attached.
"""

from __future__ import annotations

import collections
import functools
import http.server
import os
import posixpath
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

__all__ = ["ServedURL", "serve_directory"]


class ServedURL(str):
    """The server's base URL; ``hits`` counts requests per path relative to the served folder."""

    hits: collections.Counter


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client hanging up mid-body is expected here
        pass


class _Handler(http.server.SimpleHTTPRequestHandler):
    truncate: Mapping[str, int] = {}
    hits: collections.Counter
    lock: threading.Lock

    def log_message(self, format, *args):  # keep test output clean
        pass

    def _relpath(self) -> str:
        path = urllib.parse.urlsplit(self.path).path
        return posixpath.normpath(urllib.parse.unquote(path)).lstrip("/")

    def _count(self) -> str:
        rel = self._relpath()
        with self.lock:
            self.hits[rel] += 1
        return rel

    def do_HEAD(self):
        self._count()
        super().do_HEAD()

    def do_GET(self):
        rel = self._count()
        if rel in self.truncate:
            self._send_truncated(rel, self.truncate[rel])
        else:
            super().do_GET()

    def _send_truncated(self, rel: str, nbytes: int) -> None:
        """Advertise the whole file's length (at least ``nbytes + 1``), send ``nbytes``, close the connection."""
        path = Path(self.directory) / rel
        if not path.is_file():
            self.send_error(404, "File not found")
            return
        data = path.read_bytes()
        advertised = max(len(data), nbytes + 1)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(advertised))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data[:nbytes])
        self.wfile.flush()
        self.close_connection = True


@contextmanager
def serve_directory(path: str | os.PathLike, *, truncate: Mapping[str, int] | None = None) -> Iterator[ServedURL]:
    """Serve ``path`` at ``http://127.0.0.1:<free port>/`` from a daemon thread until the block ends.

    ``truncate`` maps a file's path relative to ``path`` to the number of bytes actually sent for
    it; its response still advertises the full ``Content-Length``, then the connection is closed.
    """
    hits: collections.Counter = collections.Counter()
    handler = type("Handler", (_Handler,), {"truncate": dict(truncate or {}), "hits": hits, "lock": threading.Lock()})
    server = _QuietServer(("127.0.0.1", 0), functools.partial(handler, directory=os.fspath(path)))
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="serve_directory", daemon=True
    )
    thread.start()
    host, port = server.server_address[:2]
    url = ServedURL(f"http://{host}:{port}/")
    url.hits = hits
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
