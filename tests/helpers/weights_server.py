"""A real HTTP server on 127.0.0.1 serving weights files, counting the requests it gets, and a silent one."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class WeightsServer:
    """Serves ``files`` (URL path -> bytes) at ``base_url``; ``requests`` lists every path asked for."""

    base_url: str
    files: dict[str, bytes]
    requests: list[str] = field(default_factory=list)
    # Seconds spent sending each file, in 20 pieces: keeps a download open while other processes start.
    send_seconds: float = 0.0

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"


@contextmanager
def weights_server(files: dict[str, bytes], send_seconds: float = 0.0) -> Iterator[WeightsServer]:
    served = WeightsServer("", dict(files), send_seconds=send_seconds)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            with lock:
                served.requests.append(self.path)
            body = served.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            piece = -(-len(body) // 20)
            for start in range(0, len(body), piece):
                self.wfile.write(body[start : start + piece])
                time.sleep(served.send_seconds / 20)

        def log_message(self, *args):  # quiet test output
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def silent_server() -> Iterator[str]:
    """``http://127.0.0.1:<port>``: the kernel accepts connections (backlog) but no byte ever comes back, as
    behind a black-holed route or a proxy that never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
