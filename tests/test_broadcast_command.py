"""`manage.py broadcast`: call_command with exact output, a real pty, and real subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import pty
import subprocess
import sys
import threading

import pytest
import redis
from django.core.management import CommandError, call_command
from django.test import override_settings

from broadcaster.presence import Presence
from tests.conftest import point_django_at
from tests.support import ROOT, Subscriber, default_sigint, manage, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def run_command(*args: str, stdin: str = "") -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("broadcast", *args, stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_message_option_sends_one_and_says_so(redis_url):
    """--message publishes exactly that text and prints "Sent."."""
    sub = Subscriber(redis_url)
    assert run_command("--message", "deploy at 5") == ("Sent.\n", "")
    assert sub.texts(1) == ["deploy at 5"]


def test_piped_lines_all_sent_empty_ignored(redis_url):
    """Every non-empty line of piped input is published in order; the count is reported."""
    sub = Subscriber(redis_url)
    assert run_command(stdin="one\n\n   \ntwo\nthree") == ("Sent 3 messages.\n", "")
    assert sub.texts(3) == ["one", "two", "three"]


def test_a_line_of_invisible_characters_is_refused_as_empty(redis_url):
    """Zero-width and direction characters only would show a blank announcement: refused."""
    sub = Subscriber(redis_url)
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError, match="1 line"):
        call_command("broadcast", stdin=io.StringIO("one\n\u200b\u200e\ufeff\ntwo\n"), stdout=out, stderr=err)
    assert "The message is empty: nothing in it would show" in err.getvalue()
    assert sub.texts(2) == ["one", "two"]


def test_eof_at_once_sends_nothing(redis_url):
    """Empty input is a clean exit."""
    assert run_command(stdin="") == ("Sent 0 messages.\n", "")


def test_oversize_line_refused_others_sent(redis_url):
    """A line over BROADCAST_MAX_LENGTH is refused with a message; the rest still go out."""
    sub = Subscriber(redis_url)
    with override_settings(BROADCAST_MAX_LENGTH=10):
        out, err = io.StringIO(), io.StringIO()
        with pytest.raises(CommandError) as excinfo:
            call_command("broadcast", stdin=io.StringIO("short\n" + "x" * 11 + "\nafter\n"),
                         stdout=out, stderr=err)  # fmt: skip
    assert str(excinfo.value) == "1 line(s) were not sent."
    assert out.getvalue() == "Sent 2 messages.\n"
    assert err.getvalue() == (
        "Not sent: The message is 11 characters long; the limit is 10 (BROADCAST_MAX_LENGTH).\n"
    )
    assert sub.texts(2) == ["short", "after"]


def test_redis_down_is_one_clear_error(dead_redis_url):
    """With Redis unreachable the command fails at once, naming the URL."""
    point_django_at(dead_redis_url)
    with pytest.raises(CommandError) as excinfo:
        run_command("--message", "hi")
    assert str(excinfo.value).startswith(f"Cannot reach Redis at {dead_redis_url}: ")


def test_redis_down_subprocess_exit_code_and_no_traceback(env_for, dead_redis_url):
    """As a real process: exit status 1 and one error line, no traceback."""
    done = manage(["broadcast"], env=env_for(dead_redis_url), stdin="hi\n")
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"CommandError: Cannot reach Redis at {dead_redis_url}: ")


def test_pipe_from_echo_exits_zero(env_for, redis_url):
    """`echo hi | python manage.py broadcast` sends the line and exits 0."""
    sub = Subscriber(redis_url)
    done = subprocess.run(
        f"echo hi | {sys.executable} manage.py broadcast", shell=True, cwd=ROOT,
        env=env_for(redis_url), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (0, "Sent 1 message.\n", "")
    assert sub.texts(1) == ["hi"]


class PtyOutput:
    """Everything a child wrote to its terminal, collected in a thread."""

    def __init__(self, fd: int) -> None:
        self.data = b""
        self.fd = fd
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:
                return
            if not chunk:
                return
            self.data += chunk

    def wait_for(self, text: str, *, timeout: float) -> None:
        wait_until(lambda: text.encode() in self.data, timeout=timeout, what=repr(text))


def test_terminal_count_notice_keeps_typed_line_and_ctrl_d_exits(env_for, redis_url):
    """On a terminal the count appears above the prompt, the typed text is redrawn, Ctrl-D exits."""
    sub = Subscriber(redis_url)
    pid, fd = pty.fork()
    if pid == 0:  # the child: the command on a real terminal
        os.chdir(ROOT)
        os.execve(sys.executable, [sys.executable, "manage.py", "broadcast"], env_for(redis_url))
    screen = PtyOutput(fd)
    try:
        screen.wait_for("Total clients: 0", timeout=20)
        screen.wait_for("broadcast> ", timeout=10)
        os.write(fd, b"hel")
        screen.wait_for("broadcast> hel", timeout=10)
        presence = Presence(redis.asyncio.Redis.from_url(redis_url), ttl=30)
        asyncio.run(presence.report(server_id="test-server", count=7))
        screen.wait_for("\r\x1b[2KTotal clients: 7\r\nbroadcast> hel", timeout=10)
        os.write(fd, b"lo\n")
        assert sub.texts(1) == ["hello"]
        screen.wait_for("hello\r\nbroadcast> ", timeout=10)
        os.write(fd, b"\x04")  # Ctrl-D
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)
    assert b"Traceback" not in screen.data


def test_ctrl_c_on_terminal_is_a_clean_exit(env_for, redis_url):
    """Ctrl-C at the prompt ends the command without a traceback."""
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        default_sigint()  # a suite started in the background hands its children SIGINT ignored
        os.execve(sys.executable, [sys.executable, "manage.py", "broadcast"], env_for(redis_url))
    screen = PtyOutput(fd)
    try:
        # The prompt as redrawn after the first count notice: the console is fully up.
        screen.wait_for("Total clients: 0\r\nbroadcast> ", timeout=20)
        os.write(fd, b"\x03")  # Ctrl-C
        reaped: list[int] = []

        def exited() -> bool:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                reaped.append(status)
            return bool(done)

        wait_until(exited, timeout=15, what=f"an exit after Ctrl-C; screen: {screen.data[-300:]!r}")
        assert os.waitstatus_to_exitcode(reaped[0]) == 0
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)
    assert b"Traceback" not in screen.data


def test_each_broadcast_is_recorded_with_sender_count_and_seq(redis_url):
    """The console's broadcasts are in the log: sender console:<os user>, clients then, seq."""
    import getpass

    from broadcaster.models import BroadcastRecord

    assert run_command(stdin="first\nsecond\n") == ("Sent 2 messages.\n", "")
    rows = list(
        BroadcastRecord.objects.order_by("seq").values_list("sender", "text", "status", "clients", "seq")
    )
    user = f"console:{getpass.getuser()}"
    assert rows == [(user, "first", "sent", 0, 1), (user, "second", "sent", 0, 2)]
    assert run_command("--message", "x", "--sender", "ops-team") == ("Sent.\n", "")
    assert BroadcastRecord.objects.get(text="x").sender == "ops-team"


def test_failed_publish_is_recorded_as_failed(redis_url, dead_redis_url):
    """A broadcast that could not go out (Redis down) is in the log as failed, with the reason."""
    from broadcaster.models import BroadcastRecord
    from broadcaster.sending.publish import BrokerUnavailable, publish

    point_django_at(dead_redis_url)
    with pytest.raises(BrokerUnavailable):
        asyncio.run(publish(text="lost?", sender="test"))
    record = BroadcastRecord.objects.get()
    assert (record.text, record.status, record.seq) == ("lost?", "failed", None)
    assert record.error == "Cannot reach Redis: nothing was sent. Try again in a moment."


def test_invalid_utf8_line_refused_others_sent(env_for, redis_url):
    """A piped line that is not UTF-8 is refused with a message, the others go, exit status 1."""
    sub = Subscriber(redis_url)
    done = subprocess.run([sys.executable, "manage.py", "broadcast"], cwd=ROOT, env=env_for(redis_url),
                          input=b"ok1\n\xffbad\nok2\n", capture_output=True, timeout=60)  # fmt: skip
    assert (done.returncode, done.stdout.decode(), done.stderr.decode().splitlines()) == (
        1,
        "Sent 2 messages.\n",
        [
            "Not sent: The message is not valid UTF-8 text (at character 1).",
            "CommandError: 1 line(s) were not sent.",
        ],
    )
    assert sub.texts(2) == ["ok1", "ok2"]


def test_invalid_utf8_message_option_is_one_clear_error(env_for, redis_url):
    """-m with bytes that are not UTF-8: a message, exit status 1, no traceback."""
    done = subprocess.run([sys.executable, "manage.py", "broadcast", "-m", b"x\xffy"], cwd=ROOT,
                          env=env_for(redis_url), capture_output=True, timeout=60)  # fmt: skip
    assert (done.returncode, done.stdout.decode()) == (1, "")
    assert done.stderr.decode().splitlines() == [
        "Not sent: The message is not valid UTF-8 text (at character 2).",
        "CommandError: 1 line(s) were not sent.",
    ]
