"""Real HTTP servers on 127.0.0.1 for download tests, answering per path.

``FakeServer`` answers what each test decides for every path (``routes``)
and records what was asked (``requests``), in a background thread; ``stop``
joins everything. ``Mirror`` lays it out like an Alpine mirror and
``Registry`` like a layer registry; ``conftest.py`` has them as the
``mirror`` and ``registry`` fixtures.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml

Answer = Callable[[BaseHTTPRequestHandler], None]

ARCH = "x86_64"
"""The architecture the fakes serve; tests give it to the resolvers."""


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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

            def do_HEAD(self) -> None:
                # Whether a path is served, without a body; recorded apart from GETs.
                server.requests.append(f"HEAD {self.path}")
                self.send_response(200 if self.path in server.routes else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

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


class Mirror(FakeServer):
    """A fake Alpine mirror: ``routes`` maps a path to how it is answered."""

    def __init__(self, port: int = 0) -> None:
        super().__init__("/alpine", port)

    def publish(
        self, branch: str, version: str, tarball: bytes, sha256: str = "", arch: str = ARCH
    ) -> str:
        """Serve ``tarball`` as the minirootfs of ``branch``; its file path."""
        file = f"alpine-minirootfs-{version}-{arch}.tar.gz"
        releases = [
            {"flavor": "alpine-standard", "file": "x.iso", "version": version, "sha256": "0" * 64},
            {
                "flavor": "alpine-minirootfs",
                "file": file,
                "version": version,
                "sha256": sha256 or digest(tarball),
                "size": len(tarball),
            },
        ]
        base = f"/alpine/v{branch}/releases/{arch}"
        self.routes[f"{base}/latest-releases.yaml"] = send(yaml.safe_dump(releases).encode())
        self.routes[f"{base}/{file}"] = send(tarball)
        return f"{base}/{file}"


class Registry(FakeServer):
    """A fake layer registry: ``template`` is ``{url}/{name}/{version}/{arch}.tar.gz``."""

    def __init__(self) -> None:
        super().__init__("/layers")
        self.template = self.url + "/{name}/{version}/{arch}.tar.gz"

    def publish(self, name: str, version: str, tarball: bytes, *, sha256: str | None = "") -> str:
        """Serve ``tarball``; ``sha256`` None publishes no .sha256, "" the right one."""
        path = f"/layers/{name}/{version}/{ARCH}.tar.gz"
        self.routes[path] = send(tarball)
        if sha256 is not None:
            line = f"{sha256 or digest(tarball)}  {ARCH}.tar.gz\n"
            self.routes[path + ".sha256"] = send(line.encode())
        return path
