"""A local HTTP server on 127.0.0.1 for the download and set-up tests (no network needed).

Routes (``server.files`` maps a name to bytes):

* ``/range/<name>``     200, or 206 for ``Range: bytes=N-`` (with Content-Range)
* ``/norange/<name>``   always 200 with the whole file (ignores Range)
* ``/truncated/<name>`` announces the full length, sends half, closes
* anything else         404

``server.requests`` records (path, Range header) of every request.
"""
from __future__ import annotations

import http.server
import threading
from dataclasses import dataclass, field


@dataclass
class LocalServer:
    files: dict = field(default_factory=dict)
    requests: list = field(default_factory=list)
    port: int = 0
    httpd: object = None

    def url(self, route: str, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{route}/{name}"

    def ranges(self) -> list:
        return [r for _, r in self.requests]


def _handler(state: LocalServer):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_GET(self):  # noqa: N802 - http.server's name
            rng = self.headers.get("Range")
            state.requests.append((self.path, rng))
            parts = self.path.strip("/").split("/", 1)
            if len(parts) != 2 or parts[1] not in state.files or parts[0] not in ("range", "norange", "truncated"):
                self._send(404, b"not found")
                return
            route, name = parts
            data = state.files[name]
            if route == "truncated":
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            if route == "range" and rng and rng.startswith("bytes=") and rng.endswith("-"):
                start = int(rng[6:-1])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = data[start:]
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self._send(200, data)

        def _send(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def start_server() -> LocalServer:
    state = LocalServer()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.port = httpd.server_address[1]
    state.httpd = httpd
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return state


def stop_server(state: LocalServer) -> None:
    state.httpd.shutdown()
    state.httpd.server_close()
