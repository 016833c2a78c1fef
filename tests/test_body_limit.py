"""Request bodies over their limit are refused before daphne stores them (broadcaster/server/body_limit.py):
real daphne, raw sockets, so the tests see when the answer comes relative to what was sent."""

from __future__ import annotations

import http.client
import json
import socket

import pytest

from tests.support import create_token, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

API = "/api/broadcasts/"


def send_head(port: int, method: str, path: str, headers: dict[str, str]) -> socket.socket:
    """Open a connection and send only a request's head."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    return sock


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, str]]:
    """Read one response to the end of its body: (status, headers, JSON body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the answer"
        body += chunk
    return int(lines[0].split()[1]), headers, json.loads(body)


@pytest.fixture
def server(daphne, tmp_path):
    # Daphne's temporary files for large bodies go here, so the tests can see none is made.
    (tmp_path / "tmp").mkdir()
    server = daphne(TMPDIR=str(tmp_path / "tmp"))
    yield server
    assert "Traceback" not in server.log() and "Unhandled" not in server.log(), server.log()


@pytest.mark.parametrize("path", [API, "/api/%62roadcasts/", "http://127.0.0.1/api/broadcasts/?x=1"])
def test_api_post_without_a_token_is_refused_before_its_body(server, path):
    """A POST to the API with no bearer token gets 401 as soon as its head is in, however the
    path is spelt; a small body that does arrive is read and dropped (no error in the log)."""
    sock = send_head(server.port, "POST", path, {"Content-Length": "500000000"})
    status, headers, body = read_answer(sock)
    assert (status, headers["www-authenticate"], body) == (401, "Bearer", {
        "error": "Send 'Authorization: Bearer <token>'."})  # fmt: skip
    sock.close()
    small = send_head(server.port, "POST", path, {"Content-Length": "11"})
    small.sendall(b'{"text":""}')
    assert read_answer(small)[0] == 401
    small.close()


@pytest.mark.parametrize(
    ("path", "limit"),
    [(API, 12 * 4096 + 1024),  # the longest message, every character escaped
     ("/admin/login/", 2_621_440)],  # Django's DATA_UPLOAD_MAX_MEMORY_SIZE
)  # fmt: skip
def test_declared_length_over_the_limit_is_refused_before_the_body(server, path, limit):
    """A Content-Length over the path's limit gets 413 before a byte of the body is sent; one
    byte less is let through to the application."""
    headers = {"Authorization": "Bearer not-checked-yet", "Content-Type": "application/json"}
    sock = send_head(server.port, "POST", path, {**headers, "Content-Length": str(limit + 1)})
    status, _, body = read_answer(sock)
    assert (status, body) == (413, {"error": f"The body is over {limit} bytes."})
    sock.close()
    wait_until(lambda: "Refused a request body" in server.log(), timeout=10, what="the warning")
    assert f"of {limit + 1:,} bytes to {path} from 127.0.0.1:" in server.log()
    if path == API:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("POST", path, body=b" " * limit, headers=headers)
        # Through to the view, which checks the token first.
        assert (conn.getresponse().status, server.log().count("Refused a request body")) == (401, 1)
        conn.close()


def test_chunked_body_is_refused_once_it_passes_the_limit(server):
    """Without a Content-Length the body is counted as it comes: 413 right after the limit."""
    headers = {"Authorization": "Bearer x", "Transfer-Encoding": "chunked"}
    sock = send_head(server.port, "POST", API, headers)
    chunk = b"x" * 8192
    for _ in range(7):  # 57,344 bytes: over 50,176
        sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    status, _, body = read_answer(sock)
    assert (status, body) == (413, {"error": "The body is over 50176 bytes."})
    sock.close()


@pytest.mark.serial  # measures time or memory: runs alone
def test_client_that_sends_everything_first_gets_the_answer_and_nothing_is_stored(server, tmp_path):
    """A client that sends its whole 200 MB body before reading (as http.client does) still gets
    the 413, not a reset; daphne neither keeps the body in memory nor writes it to disk."""
    before = server.steady_rss()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    size = 200 * 1024 * 1024
    block = b"x" * (1024 * 1024)
    conn.putrequest("POST", API)
    for name, value in {"Authorization": "Bearer x", "Content-Length": str(size)}.items():
        conn.putheader(name, value)
    conn.endheaders()
    for _ in range(size // len(block)):
        conn.send(block)
    response = conn.getresponse()
    assert (response.status, json.loads(response.read())) == (413, {"error": "The body is over 50176 bytes."})
    conn.close()
    grew = server.steady_rss() - before
    print(f"daphne RSS after a refused 200 MB body: {grew / 1e6:+.1f} MB")
    assert grew < 20e6
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_good_post_still_goes_through(server, env_for, redis_url):
    """The limits leave a real publish alone: 201."""
    secret = create_token("limits", env=env_for(redis_url))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    body = json.dumps({"text": "\U0001f600" * 4096}).encode()  # the longest message, escaped
    conn.request("POST", API, body=body, headers={"Authorization": f"Bearer {secret}"})
    response = conn.getresponse()
    assert (response.status, json.loads(response.read())["seq"]) == (201, 1)
    conn.close()
