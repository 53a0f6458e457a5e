"""The client's own HTTP/1.1 (squish.cli.client) against answers written byte by byte.

The daemon's real answers are covered by tests/test_cli_client.py and
tests/test_api*.py (the real API app, over a real socket). Here a unix
socket answers each connection with bytes a test chose, well-formed in
the ways uvicorn and h11 may write them or broken in the ways a dying
daemon or a wrong peer would, and records what the client sent. Whatever
comes, the client either returns the answer or raises a one-line
``SquishError``; it never hangs, hoards memory or lets a foreign exception
through.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from squish.cli.client import ApiError, Client, DaemonUnreachable
from squish.errors import SquishError

STATUS = {"version": "0.1.0", "pid": 1}
BODY = json.dumps(STATUS).encode()


class RawDaemon:
    """A unix socket at ``path`` answering every connection with ``answer``.

    Each request is read whole (its head, then a Content-Length or chunked
    body) and kept in ``requests``; then ``answer`` is sent, in ``pieces``
    of that many bytes if set, and the connection closed.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.answer = b""
        self.pieces: int | None = None
        self.requests: list[bytes] = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Self:
        self._listener.bind(str(self.path))
        self._listener.listen(8)
        self._listener.settimeout(0.05)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping.set()
        self._thread.join(5)
        self._listener.close()

    def client(self) -> Client:
        return Client(self.path, timeout=2.0)

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(5)
                self.requests.append(_read_request(connection))
                step = self.pieces or len(self.answer) or 1
                for at in range(0, len(self.answer), step):
                    connection.sendall(self.answer[at : at + step])


def _read_request(connection: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        while not body.endswith(b"0\r\n\r\n"):
            body += connection.recv(65536)
    else:
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                while len(body) < int(line.split(b":")[1]):
                    body += connection.recv(65536)
    return head + b"\r\n\r\n" + body


@pytest.fixture
def raw(tmp_path: Path) -> Iterator[RawDaemon]:
    with RawDaemon(tmp_path / "raw.sock") as daemon:
        yield daemon


def answer(body: bytes = BODY, *headers: str, status: str = "200 OK") -> bytes:
    lines = [f"HTTP/1.1 {status}", *headers, "", ""]
    return "\r\n".join(lines).encode() + body


def chunked(*chunks: bytes, trailer: bytes = b"") -> bytes:
    body = b"".join(b"%x\r\n%b\r\n" % (len(chunk), chunk) for chunk in chunks)
    return answer(body + b"0\r\n" + trailer + b"\r\n", "Transfer-Encoding: chunked")


LENGTH = answer(BODY, "content-type: application/json", f"content-length: {len(BODY)}")


# -- what is understood ------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw_answer",
    [
        pytest.param(LENGTH, id="content-length"),
        pytest.param(answer(BODY, f"Content-Length: {len(BODY)}"), id="header-case"),
        pytest.param(answer(BODY), id="until-close"),
        pytest.param(chunked(BODY[:5], BODY[5:]), id="chunked"),
        pytest.param(
            chunked(BODY[:1], BODY[1:], trailer=b"x-checksum: 1\r\n"), id="chunked-trailer"
        ),
        pytest.param(
            answer(
                b"%x;ext=1\r\n%b\r\n0\r\n\r\n" % (len(BODY), BODY), "transfer-encoding: Chunked"
            ),
            id="chunk-extension",
        ),
        pytest.param(b"HTTP/1.1 100 Continue\r\n\r\n" + LENGTH, id="informational-first"),
        pytest.param(LENGTH.replace(b"HTTP/1.1", b"HTTP/1.0"), id="http-1.0"),
        pytest.param(LENGTH.replace(b"200 OK", b"200"), id="no-reason-phrase"),
        pytest.param(LENGTH.replace(b"\r\n", b"\n"), id="bare-newlines"),
    ],
)
def test_well_formed_answers_are_read(raw: RawDaemon, raw_answer: bytes) -> None:
    raw.answer = raw_answer
    with raw.client() as client:
        assert client.status() == STATUS


def test_an_answer_arriving_a_byte_at_a_time_is_read_whole(raw: RawDaemon) -> None:
    raw.answer, raw.pieces = chunked(BODY[:4], BODY[4:]), 1
    with raw.client() as client:
        assert client.status() == STATUS


def test_a_stream_yields_its_lines_across_chunk_boundaries(raw: RawDaemon) -> None:
    events = [{"kind": "container.started", "name": f"c{n}", "at": 1.0} for n in range(3)]
    text = b"".join(json.dumps(event).encode() + b"\n" for event in events)
    raw.answer = chunked(text[:7], text[7:40], text[40:41], text[41:])
    with raw.client() as client:
        assert list(client.events()) == events


def test_a_stream_line_that_is_not_json_is_a_one_line_error(raw: RawDaemon) -> None:
    raw.answer = chunked(b'{"kind": "x", "name": "a", "at": 1}\n{"kind": "x", "na\n')
    with raw.client() as client:
        events = client.events()
        assert next(events)["name"] == "a"
        with pytest.raises(SquishError, match="a line of /v1/events that is not JSON"):
            next(events)


def test_an_error_answer_is_an_api_error_with_the_daemons_message(raw: RawDaemon) -> None:
    body = json.dumps({"error": "no container 'web'"}).encode()
    raw.answer = answer(body, f"content-length: {len(body)}", status="404 Not Found")
    with raw.client() as client, pytest.raises(ApiError) as error:
        client.inspect("web")
    assert (error.value.status, str(error.value)) == (404, "no container 'web'")
    # The same for a stream, whose error answer is read before it starts.
    with raw.client() as client, pytest.raises(ApiError) as error:
        list(client.logs("web"))
    assert error.value.status == 404


# -- what is sent ---------------------------------------------------------------------------


def test_a_request_is_one_http_1_1_request_per_connection(raw: RawDaemon) -> None:
    raw.answer = LENGTH
    with raw.client() as client:
        client.status()
        list(client.logs("we b/1", tail=5))
    get, logs = raw.requests
    assert get.split(b"\r\n")[0] == b"GET /v1/status HTTP/1.1"
    headers = get.lower().split(b"\r\n")
    assert b"host: squish" in headers
    assert b"connection: close" in headers
    assert logs.split(b"\r\n")[0] == b"GET /v1/containers/we%20b%2F1/logs?follow=0&tail=5 HTTP/1.1"


def test_a_json_body_is_sent_with_its_length(raw: RawDaemon) -> None:
    raw.answer = LENGTH
    with raw.client() as client:
        client.apply("web", '[run]\ncommand = "/bin/app"\n')
    head, _, body = raw.requests[0].partition(b"\r\n\r\n")
    assert head.startswith(b"POST /v1/containers HTTP/1.1\r\n")
    assert f"content-length: {len(body)}".encode() in head.lower().split(b"\r\n")
    assert json.loads(body)["name"] == "web"


def test_an_upload_is_sent_in_chunks_and_empty_ones_are_left_out(raw: RawDaemon) -> None:
    raw.answer = LENGTH
    with raw.client() as client:
        client.import_layer("python", "3.11", iter([b"abc", b"", b"de"]), source="a b.tar")
    head, _, body = raw.requests[0].partition(b"\r\n\r\n")
    assert head.startswith(b"PUT /v1/layers/python/3.11?source=a+b.tar HTTP/1.1\r\n")
    assert b"transfer-encoding: chunked" in head.lower().split(b"\r\n")
    assert body == b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"


def test_a_request_without_a_body_says_its_length_is_0(raw: RawDaemon) -> None:
    raw.answer = LENGTH
    with raw.client() as client:
        client.stop("web")
    assert b"content-length: 0" in raw.requests[0].lower().split(b"\r\n")


# -- what is refused ------------------------------------------------------------------------

LOST = "lost the connection to the squish daemon at"
GARBLED = "is not the squish daemon, or not HTTP/1.1"


@pytest.mark.parametrize(
    ("raw_answer", "kind", "reason"),
    [
        pytest.param(b"", LOST, "without answering", id="nothing"),
        pytest.param(b"HTTP/1.1 200 OK", LOST, "stopped before its end", id="cut-status-line"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-", LOST, "stopped before", id="cut-headers"),
        pytest.param(
            answer(BODY[:4], f"content-length: {len(BODY)}"),
            LOST,
            f"stopped {len(BODY) - 4} bytes short",
            id="cut-body",
        ),
        pytest.param(chunked(BODY)[:-20], LOST, "bytes short", id="cut-chunk"),
        pytest.param(chunked(BODY)[:-5], LOST, "stopped before its end", id="no-last-chunk"),
        pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n", GARBLED, "the status line is", id="not-http"),
        pytest.param(b"HTTP/1.1 2000 OK\r\n\r\n", GARBLED, "the status line", id="status-4-digits"),
        pytest.param(b"HTTP/2 200\r\n\r\n", GARBLED, "the status line", id="http-2"),
        pytest.param(b"HTTP/1.1 OK 200\r\n\r\n", GARBLED, "the status line", id="status-words"),
        pytest.param(
            answer(BODY, "no colon here"), GARBLED, "a header line is 'no colon here'", id="header"
        ),
        pytest.param(
            answer(BODY, "Content-Length : 3"), GARBLED, "a header line", id="space-before-colon"
        ),
        pytest.param(
            answer(BODY, "x-big: " + "a" * 70000), GARBLED, "longer than 65536", id="huge-header"
        ),
        pytest.param(
            answer(BODY, *(f"x-{n}: {n}" for n in range(101))),
            GARBLED,
            "more than 100 headers",
            id="too-many-headers",
        ),
        pytest.param(
            answer(BODY, "content-length: -1"), GARBLED, "the Content-Length is '-1'", id="negative"
        ),
        pytest.param(
            answer(BODY, "content-length: 3", "content-length: 4"),
            GARBLED,
            "the Content-Length is '3, 4'",
            id="two-lengths",
        ),
        pytest.param(
            answer(BODY, "transfer-encoding: gzip"), GARBLED, "encoding is 'gzip'", id="gzip"
        ),
        pytest.param(
            answer(b"zz\r\n", "transfer-encoding: chunked"),
            GARBLED,
            "a chunk's size line is 'zz'",
            id="chunk-size",
        ),
        pytest.param(
            answer(b"0x3\r\n", "transfer-encoding: chunked"),
            GARBLED,
            "chunk's size",
            id="chunk-size-0x",
        ),
        pytest.param(
            answer(b"2\r\nabc\r\n0\r\n\r\n", "transfer-encoding: chunked"),
            GARBLED,
            "longer than its size",
            id="chunk-overlong",
        ),
        pytest.param(
            answer(b"1" * 70000 + b"\r\n", "transfer-encoding: chunked"),
            GARBLED,
            "longer than 65536",
            id="huge-chunk-size-line",
        ),
    ],
)
def test_a_broken_answer_is_a_one_line_error(
    raw: RawDaemon, raw_answer: bytes, kind: str, reason: str
) -> None:
    raw.answer = raw_answer
    with raw.client() as client, pytest.raises(SquishError) as error:
        client.status()
    assert type(error.value) is SquishError
    message = str(error.value)
    assert kind in message
    assert reason in message
    assert "\n" not in message


def test_a_stream_cut_short_is_a_lost_connection(raw: RawDaemon) -> None:
    raw.answer = chunked(b'{"kind": "x", "name": "a", "at": 1}\n')[:-5]
    with raw.client() as client:
        events = client.events()
        assert next(events)["name"] == "a"
        with pytest.raises(SquishError, match=LOST):
            next(events)


def test_every_cut_of_a_framed_answer_is_an_error(raw: RawDaemon) -> None:
    # Nothing short of the whole answer passes for an answer.
    for whole in (LENGTH, chunked(BODY[:5], BODY[5:], trailer=b"x: 1\r\n")):
        for end in range(len(whole)):
            raw.answer = whole[:end]
            with raw.client() as client, pytest.raises(SquishError, match=LOST):
                client.status()


def test_whatever_answers_the_client_returns_or_says_what_is_wrong(raw: RawDaemon) -> None:
    flips = st.lists(st.tuples(st.integers(0, len(LENGTH) - 1), st.integers(0, 255)), max_size=4)

    @settings(max_examples=300, deadline=None)
    @given(
        st.one_of(
            st.binary(max_size=200),
            st.builds(lambda cut: LENGTH[:cut], st.integers(0, len(LENGTH))),
            st.builds(_flipped, flips),
            st.builds(lambda tail: b"HTTP/1.1 200 OK\r\n" + tail, st.binary(max_size=200)),
        )
    )
    def check(raw_answer: bytes) -> None:
        raw.answer = raw_answer
        try:
            with raw.client() as client:
                assert isinstance(client.status(), dict)
        except ApiError as exc:
            assert 400 <= exc.status <= 999
        except DaemonUnreachable:
            raise
        except SquishError as exc:
            assert "\n" not in str(exc)

    check()


def _flipped(flips: list[tuple[int, int]]) -> bytes:
    data = bytearray(LENGTH)
    for at, value in flips:
        data[at] = value
    return bytes(data)


# -- nobody there ---------------------------------------------------------------------------


def test_a_socket_nobody_listens_on_is_unreachable(tmp_path: Path) -> None:
    path = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # bound, never listening: as a daemon that died leaves it
        with Client(path) as client, pytest.raises(DaemonUnreachable) as error:
            client.status()
    assert f"cannot reach the squish daemon at {path} (connection refused)" in str(error.value)
