"""HTTP downloads for layers: one place for timeouts, deadlines, progress and errors.

Used by the resolvers that fetch (``squish.layers.alpine`` from an Alpine
mirror, ``squish.layers.registry`` from layer registries). A ``Fetcher``
streams a URL into a file while hashing it, and turns every way a download
can fail (refused connection, 404, 500, a server that stalls, one that
trickles for ever, a body cut short) into one ``LayerError`` line that says
what to do. Two clocks bound a download: ``timeout`` for connecting and for
each read (a stalled server), and ``deadline`` for the whole of it (a server
sending a byte a second would otherwise never time out).

Blocking; the resolvers' callers run them in worker threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import IO

import httpx

from squish.errors import LayerError
from squish.layers.unpack import Limits

Progress = Callable[[int, int | None], None]
"""Told ``(bytes so far, total bytes or None)`` as a download or unpack goes."""

FetchObserver = Callable[[str, str, int], None]
"""Told ``(layer kind, "success" | "error", bytes downloaded)`` after each fetch;
the daemon counts these in its metrics."""


@dataclass(frozen=True)
class Downloaded:
    sha256: str
    size: int


class NotFound(LayerError):
    """The server answered 404 where that has a meaning of its own (``not_found``)."""


class Fetcher:
    """Downloads for one kind of server (``source``: "the Alpine mirror").

    ``hint`` is added to "unreachable" errors (where to configure another
    server). ``client`` replaces the HTTP client (it is then not closed
    here); otherwise one is opened per session.
    """

    def __init__(
        self,
        source: str,
        *,
        hint: str = "",
        timeout: float = 30.0,
        deadline: float = 3600.0,
        client: httpx.Client | None = None,
    ) -> None:
        self.source = source
        self.hint = hint
        self.timeout = timeout
        self.deadline = deadline
        self.client = client

    @contextlib.contextmanager
    def session(self) -> Iterator[httpx.Client]:
        if self.client is not None:
            yield self.client
            return
        with httpx.Client(timeout=httpx.Timeout(self.timeout), follow_redirects=True) as client:
            yield client

    def read(
        self, client: httpx.Client, url: str, *, limit: int, not_found: str | None = None
    ) -> bytes:
        """The body of a small document (a release list, a ``.sha256``)."""
        body = bytearray()
        started = time.monotonic()
        with self.get(client, url, not_found=not_found) as response:
            for chunk in self._chunks(response, url, started):
                body += chunk
                if len(body) > limit:
                    raise LayerError(f"{url} is larger than {limit} bytes; it is not what we asked")
            _check_length(response, len(body), url)
        return bytes(body)

    def download(
        self,
        client: httpx.Client,
        url: str,
        into: IO[bytes],
        *,
        progress: Progress | None = None,
        not_found: str | None = None,
    ) -> Downloaded:
        """Stream ``url`` into ``into``, hashing it; its sha256 and size."""
        content = hashlib.sha256()
        size = 0
        started = time.monotonic()
        with self.get(client, url, not_found=not_found) as response:
            declared = response.headers.get("content-length")
            total = int(declared) if declared is not None and declared.isdigit() else None
            for chunk in self._chunks(response, url, started):
                content.update(chunk)
                size += len(chunk)
                write(into, chunk)
                if progress is not None:
                    progress(size, total)
            _check_length(response, size, url)
        return Downloaded(content.hexdigest(), size)

    def found(self, client: httpx.Client, url: str) -> bool | None:
        """Whether ``url`` is there, asked with a HEAD request.

        False only for a 404; None when the server cannot say (no HEAD, an
        error), so callers fall back to what they would have said anyway.
        """
        try:
            status = client.head(url).status_code
        except httpx.HTTPError:
            return None
        if status == httpx.codes.NOT_FOUND:
            return False
        return True if httpx.codes.is_success(status) else None

    @contextlib.contextmanager
    def get(
        self, client: httpx.Client, url: str, *, not_found: str | None = None
    ) -> Iterator[httpx.Response]:
        """Stream a GET of ``url``; every failure becomes one ``LayerError`` line.

        ``not_found`` is the message for a 404, when that has a meaning of its
        own (no such release), raised as ``NotFound``; otherwise a 404 is
        reported like any answer.
        """
        try:
            with client.stream("GET", url) as response:
                status = response.status_code
                if status == httpx.codes.NOT_FOUND and not_found is not None:
                    raise NotFound(f"{not_found} ({url} answered 404)")
                if status >= 500:
                    raise LayerError(
                        f"{url} answered {status} {response.reason_phrase}; {self.source} is "
                        "failing, try again later or use another one"
                    )
                if status != httpx.codes.OK:
                    raise LayerError(f"{url} answered {status} {response.reason_phrase}")
                yield response
        except httpx.ConnectTimeout as exc:
            raise LayerError(
                f"{self.source} is unreachable: connecting to {url} timed out after "
                f"{self.timeout:g}s, and nothing is cached for it{self._hint()}"
            ) from exc
        except httpx.TimeoutException as exc:
            raise LayerError(f"{url} stopped answering for {self.timeout:g}s; timed out") from exc
        except httpx.ConnectError as exc:
            raise LayerError(
                f"{self.source} is unreachable ({url}: {one_line(exc)}), "
                f"and nothing is cached for it{self._hint()}"
            ) from exc
        except httpx.HTTPError as exc:
            raise LayerError(f"downloading {url} failed: {one_line(exc)}") from exc

    def _hint(self) -> str:
        return f"; {self.hint}" if self.hint else ""

    def _chunks(self, response: httpx.Response, url: str, started: float) -> Iterator[bytes]:
        """The body of ``response`` in chunks, within the deadline; cut short is an error."""
        try:
            # No chunk size: data is handed over as it arrives, so a server
            # trickling bytes meets the deadline instead of filling a buffer.
            for chunk in response.iter_bytes():
                if time.monotonic() - started > self.deadline:
                    raise LayerError(
                        f"the download of {url} took longer than {self.deadline:g}s; "
                        f"gave up (is {self.source} very slow?)"
                    )
                yield chunk
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise LayerError(
                f"the download of {url} was cut short ({one_line(exc)}); try again"
            ) from exc


def _check_length(response: httpx.Response, size: int, url: str) -> None:
    declared = response.headers.get("content-length")
    # Only an identity body has a Content-Length equal to what we counted.
    if declared is None or response.headers.get("content-encoding", "identity") != "identity":
        return
    if declared.isdigit() and int(declared) != size:
        raise LayerError(
            f"the download of {url} was cut short: got {size} of {declared} bytes; try again"
        )


def write(file: IO[bytes], chunk: bytes) -> None:
    try:
        file.write(chunk)
    except OSError as exc:
        raise LayerError(f"cannot write the layer cache: {exc.strerror or exc}") from exc


async def receive_archive(chunks: AsyncIterator[bytes], file: IO[bytes], *, what: str) -> None:
    """Copy an uploaded archive (its chunks) into ``file``.

    One bigger than what an archive may unpack to is refused as it comes,
    naming ``what``; a full disk is a ``LayerError`` (see ``write``).
    """
    limit = Limits().total_bytes
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > limit:
            raise LayerError(f"{what}: an archive larger than {limit} bytes is refused")
        write(file, chunk)
    file.flush()


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
