"""`manage.py listen`: the terminal receiver, against a real daphne that restarts."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import pytest

from broadcaster.listener import backoff_delay, render
from tests.support import ROOT, LineReader, default_sigint, free_port, manage

TIMED = re.compile(r"^\[\d\d:\d\d:\d\d\] (.*)$")


def test_prints_broadcasts_and_reconnects_after_restart(daphne, env_for, redis_url):
    """A broadcast is printed with its time; after a server restart the listener is back by itself."""
    server = daphne()
    listener = subprocess.Popen(
        [sys.executable, "manage.py", "listen", server.ws], cwd=ROOT, env=env_for(redis_url),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint,
    )  # fmt: skip
    out, err = LineReader(listener.stdout), LineReader(listener.stderr)
    try:
        err.wait_for(lambda s: s == f"Connected to {server.ws}", timeout=20, what="connected")
        out.wait_for(lambda s: s == "Total clients: 1", timeout=20, what="count")
        assert manage(["broadcast", "-m", "first <b>one</b>"], env=env_for(redis_url)).returncode == 0
        line = out.wait_for(lambda s: bool(TIMED.match(s)), timeout=20, what="first message")
        assert TIMED.match(line).group(1) == "first <b>one</b>"
        # Terminal controls are shown, not obeyed: a title set, a screen clear, the clipboard
        # written with OSC 52, a carriage return over the line, a bell (issue 26, item 7).
        hostile = "a\x1b]0;owned\x07\x1b[2J\x1b]52;c;SGk=\x07\rb\x9b2Jc\u202ed\tkept"
        assert manage(["broadcast", "-m", hostile], env=env_for(redis_url)).returncode == 0
        line = out.wait_for(lambda s: bool(TIMED.match(s)), timeout=20, what="hostile message")
        assert TIMED.match(line).group(1) == (
            "a\\x1b]0;owned\\x07\\x1b[2J\\x1b]52;c;SGk=\\x07\\x0db\\x9b2Jc\\u202ed\tkept"
        )

        server.stop()
        err.wait_for(
            lambda s: s.startswith(("Connection lost", "Server restarting")), timeout=20, what="loss noticed"
        )
        server.start()
        err.wait_for(lambda s: s == f"Connected to {server.ws}", timeout=60, what="reconnected")
        out.wait_for(lambda s: s == "Total clients: 1", timeout=20, what="count after restart")
        assert manage(["broadcast", "-m", "second"], env=env_for(redis_url)).returncode == 0
        line = out.wait_for(lambda s: bool(TIMED.match(s)), timeout=20, what="second message")
        assert TIMED.match(line).group(1) == "second"
    finally:
        listener.send_signal(signal.SIGINT)
        listener.wait(timeout=20)
    assert listener.returncode == 0
    err.wait_for(lambda s: s == "Stopped.", timeout=5, what="a clean stop")
    assert not any("Traceback" in s for s in err.seen)


@pytest.mark.parametrize("transport", ["websocket", "sse"])
@pytest.mark.parametrize("before", ["nothing", "an old message"])
def test_no_message_yet_and_server_killed_nothing_published_meanwhile_is_lost(
    daphne, env_for, redis_url, transport, before
):
    """A listener that has been shown no message (none ever published, or only one too old to
    be the current announcement) resumes from the `position` it was told: the three published
    while its server was down (SIGKILL) are all printed, in order, with no reset line. Before
    `position`, it came back as a new client and printed only the newest (or none). Then
    Ctrl-C stops it."""
    server = daphne(BROADCAST_LATEST_AGE="0")
    if before != "nothing":
        assert manage(["broadcast", "-m", "old"], env=env_for(redis_url)).returncode == 0
    listener = subprocess.Popen(
        [sys.executable, "manage.py", "listen", "--transport", transport, server.ws], cwd=ROOT,
        env=env_for(redis_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=default_sigint,
    )  # fmt: skip
    out, err = LineReader(listener.stdout), LineReader(listener.stderr)
    try:
        out.wait_for(lambda s: s == "Total clients: 1", timeout=20, what="count")
        server.stop(signal.SIGKILL)
        err.wait_for(lambda s: s.startswith("Connection lost"), timeout=20, what="loss noticed")
        gap = "\n".join(f"gap-{i}" for i in range(1, 4))
        assert manage(["broadcast"], env=env_for(redis_url), stdin=gap).returncode == 0
        server.start()
        for i in range(1, 4):
            line = out.wait_for(lambda s: bool(TIMED.match(s)), timeout=60, what=f"gap-{i}")
            assert TIMED.match(line).group(1) == f"gap-{i}"
        # Ctrl-C still stops it after its reconnect. (Over SSE it did not: Python 3.11's
        # asyncio.wait_for around the stream's reads dropped the cancellation; failed 4 in 4.)
        listener.send_signal(signal.SIGINT)
        assert listener.wait(timeout=20) == 0
        err.wait_for(lambda s: s == "Stopped.", timeout=5, what="Stopped.")
    finally:
        listener.kill()
        listener.wait(timeout=20)
    printed = [m.group(1) for m in map(TIMED.match, out.seen) if m]
    assert printed == ["gap-1", "gap-2", "gap-3"], out.seen
    assert not any("missed" in s for s in out.seen), out.seen


def test_backoff_grows_jittered_and_capped():
    """Delays double from 0.5 s, are jittered within the upper half, and stop at 30 s."""
    assert [backoff_delay(n, rng=lambda: 0.0) for n in range(8)] == [
        0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]  # fmt: skip
    assert [backoff_delay(n, rng=lambda: 1.0) for n in (0, 3, 10)] == [0.5, 4.0, 30.0]


def test_render_frames():
    """Messages print with their local time, counts as the original did, unknown types not at all."""
    assert render('{"type":"count","clients":3}') == ["Total clients: 3"]
    assert render('{"type":"pong"}') == []
    assert render("nonsense") == ["(unreadable frame: 'nonsense')"]
    [line] = render('{"type":"message","id":"a","text":"hi","time":"2026-01-01T12:00:00.000Z"}')
    assert TIMED.match(line).group(1) == "hi"
    batch = render(
        '{"type":"batch","messages":[{"type":"message","id":"a","text":"one","time":"2026-01-01T12:00:00Z"},'
        '{"type":"message","id":"b","text":"two","time":"2026-01-01T12:00:01Z"}]}'
    )
    assert [TIMED.match(line).group(1) for line in batch] == ["one", "two"]
    [line] = render(
        '{"type":"message","id":"a","text":"x\\u0000\\u0007\\r\\n\\u007fy","time":"2026-01-01T12:00:00Z"}'
    )
    assert line.split("] ", 1)[1] == "x\\x00\\x07\\x0d\n  \\x7fy"  # the newline kept, the next line indented
    assert render("[" * 5000) == [f"(unreadable frame: {'[' * 80!r})"]


def test_says_cannot_connect_until_the_first_connection(env_for, redis_url):
    """With no server at the URL, the listener says it cannot connect (not "lost") and keeps trying."""
    url = f"ws://127.0.0.1:{free_port()}/ws/broadcast/"
    listener = subprocess.Popen([sys.executable, "manage.py", "listen", url], cwd=ROOT,
                                env=env_for(redis_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip
    try:
        err = LineReader(listener.stderr)
        first = err.wait_for(lambda s: bool(s), timeout=20, what="a status line")
        assert first.startswith(f"Cannot connect to {url} (") and "; retrying in " in first, first
        err.wait_for(lambda s: s.startswith(f"Cannot connect to {url} ("), timeout=20, what="a second try")
        assert not any("Connection lost" in line for line in err.seen)
    finally:
        listener.kill()
        listener.wait(timeout=10)


def test_finds_the_server_from_port_in_a_dotenv_file(daphne, env_for, redis_url, tmp_path):
    """With no URL, listen connects where `make run` would listen: PORT (and HOST) from the
    environment or, as here, from the .env file."""
    server = daphne()
    dotenv = tmp_path / "site.env"
    dotenv.write_text(f"HOST=0.0.0.0\nPORT={server.port}\n")
    env = {k: v for k, v in env_for(redis_url).items() if k not in {"HOST", "PORT"}}
    env["BROADCAST_DOTENV"] = str(dotenv)
    listener = subprocess.Popen([sys.executable, "manage.py", "listen"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=default_sigint)  # fmt: skip
    out, err = LineReader(listener.stdout), LineReader(listener.stderr)
    try:
        err.wait_for(lambda s: s == f"Connected to ws://127.0.0.1:{server.port}/ws/broadcast/", timeout=20,
                     what="connected")  # fmt: skip
        out.wait_for(lambda s: s == "Total clients: 1", timeout=20, what="count")
    finally:
        listener.send_signal(signal.SIGINT)
        listener.wait(timeout=20)


def test_local_server_url():
    """HOST/PORT as make run reads them; an every-address HOST is reached over loopback."""
    from broadcaster.management.commands.listen import local_server_url

    assert local_server_url({}) == "ws://127.0.0.1:8000/ws/broadcast/"
    assert local_server_url({"PORT": "8765"}) == "ws://127.0.0.1:8765/ws/broadcast/"
    assert local_server_url({"HOST": "0.0.0.0", "PORT": "9"}) == "ws://127.0.0.1:9/ws/broadcast/"
    assert local_server_url({"HOST": "::1"}) == "ws://[::1]:8000/ws/broadcast/"
    assert local_server_url({"HOST": "example.org"}) == "ws://example.org:8000/ws/broadcast/"
