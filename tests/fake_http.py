"""A real HTTP server on 127.0.0.1 for download tests, answering per path.

Used by the Alpine mirror and layer registry tests: each test decides what
every path answers (``routes``), and the server records what was asked
(``requests``). It runs in a background thread; ``stop`` joins everything.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Answer = Callable[[BaseHTTPRequestHandler], None]


def send(body: bytes, status: int = 200, length: int | None = None) -> Answer:
    """Answer with ``body``; ``length`` claims another Content-Length (a cut-off body)."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Length", str(len(body) if length is None else length))
        handler.end_headers()
        handler.wfile.write(body)
        handler.close_connection = True

    return answer


class FakeServer:
    """``routes`` maps a request path to how it is answered; anything else is a 404.

    ``url`` is the server's address (``port`` 0: any free one) plus
    ``prefix``. ``release`` is set on stop, so that handlers that stall on
    purpose can finish.
    """

    def __init__(self, prefix: str = "", port: int = 0) -> None:
        self.routes: dict[str, Answer] = {}
        self.requests: list[str] = []
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                answer = server.routes.get(self.path)
                if answer is None:
                    self.send_error(404)
                    return
                answer(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = False  # server_close joins handler threads
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{prefix}"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,))
        self._thread.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.release.set()
            self.server.shutdown()
            self.server.server_close()
            self._thread.join()
