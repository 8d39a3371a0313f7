"""The upstream fetch: one deadline from connect to last byte, short bodies are failures."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import pytest

from exporter.fetch import Fetcher, FetchError

BODY = b"vllm:num_requests_running 1\n"
Reply = Callable[[socket.socket], None]


@contextmanager
def raw_server(reply: Reply) -> Iterator[str]:
    """A loopback server that reads one request per connection and answers with ``reply``."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    got = conn.recv(4096)
                    if not got:
                        break
                    data += got
                with suppress(OSError):
                    reply(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/metrics"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def fetch_error(url: str, timeout: float = 2.0) -> FetchError:
    with pytest.raises(FetchError) as failed:
        Fetcher(url, timeout, 1 << 20).get()
    return failed.value


def ok(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY))


def test_a_whole_answer_is_returned_and_the_connection_reused() -> None:
    with raw_server(ok) as url:
        fetcher = Fetcher(url, 2.0, 1 << 20)
        assert fetcher.get() == BODY


def test_a_body_short_of_its_content_length_is_truncated() -> None:
    def short(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + BODY)

    with raw_server(short) as url:
        err = fetch_error(url)
    assert err.reason == "truncated"
    assert f"after {len(BODY)} of the 1000 bytes" in str(err)


@pytest.mark.parametrize("chunks", [
    b"1c\r\n" + BODY + b"\r\n",  # ends before the last, empty chunk
    b"zz\r\n" + BODY + b"\r\n0\r\n\r\n",  # an invalid chunk size
])
def test_a_broken_chunked_body_is_truncated(chunks: bytes) -> None:
    def chunked(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)

    with raw_server(chunked) as url:
        assert fetch_error(url).reason == "truncated"


def test_one_deadline_covers_the_status_line_and_every_header() -> None:
    def trickle(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        for _ in range(40):  # one header byte every 100 ms: 4 s in all
            conn.sendall(b"X")
            time.sleep(0.1)  # the trickle itself, not synchronisation

    with raw_server(trickle) as url:
        start = time.monotonic()
        err = fetch_error(url, timeout=0.5)
        took = time.monotonic() - start
    assert err.reason == "timeout"
    assert took < 1.0, f"the poll took {took:.2f}s with a 0.5s deadline"


def test_a_refused_connection_has_its_own_reason() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert fetch_error(f"http://127.0.0.1:{port}/metrics").reason == "refused"


def test_binary_is_not_text_and_raw_bytes_never_reach_the_message() -> None:
    def binary(conn: socket.socket) -> None:
        junk = bytes(range(256)) * 4
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(junk), junk))

    def not_http(conn: socket.socket) -> None:
        conn.sendall(b"\x00\x01\x02\x1b[31m" + bytes(range(128, 256)) * 100 + b"\r\n\r\n")

    with raw_server(binary) as url:
        err = fetch_error(url)
    assert err.reason == "not_text"
    with raw_server(not_http) as url:
        err = fetch_error(url)
    assert err.reason == "connection"
    message = str(err)
    assert message.isprintable() and len(message) < 260, message
