"""The operator console behind `manage.py broadcast`: read lines, publish each, show the count.

Lines are read with aioconsole. On a terminal, GNU readline runs in aioconsole's daemon
thread so that a count notice can be printed above the prompt and the half-typed line
redrawn as it was; from a pipe or a file, every line is sent and the run ends at EOF.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import IO

from aioconsole.stream import NonFileStreamReader, run_as_daemon
from django.conf import settings
from django.core.management.base import OutputWrapper
from redis.exceptions import RedisError

from broadcaster import protocol
from broadcaster.backend import redis_client
from broadcaster.presence import group_presence
from broadcaster.sending.errors import BroadcastError, BroadcastUnavailable
from broadcaster.sending.publish import publish, retract

logger = logging.getLogger(__name__)

PROMPT = "broadcast> "


class ConsoleError(Exception):
    """The console cannot go on; the text is for the operator."""


@dataclass(frozen=True)
class Options:
    """What every line of a run is sent with (checked by publish.validate_options)."""

    level: str = protocol.LEVEL_INFO
    expires_in: float | None = None
    # Who every line is for (checked by publish.check_audience).
    audience: tuple[str, ...] = protocol.AUDIENCE_EVERYONE


@dataclass
class Tally:
    """What a console run did, for its closing line and exit status."""

    sent: int = 0
    refused: list[str] = field(default_factory=list)


class Screen:
    """Writes to the operator without garbling the line being typed."""

    def __init__(self, out: OutputWrapper, err: OutputWrapper, *, interactive: bool) -> None:
        self.out = out
        self.err = err
        self.interactive = interactive

    def notice(self, text: str) -> None:
        """Print a line above the prompt, then redraw the prompt and what was typed so far."""
        if self.interactive:
            import readline

            self.out.write(f"\r\x1b[2K{text}\n{PROMPT}{readline.get_line_buffer()}", ending="")
        else:
            self.out.write(text)
        self.out.flush()

    def error(self, text: str) -> None:
        """Print a problem with one line of input."""
        self.err.write(text)
        self.err.flush()


async def check_redis() -> None:
    """Fail with one clear line when Redis cannot be reached."""
    try:
        await redis_client.shared_client().ping()
    except (RedisError, OSError) as exc:
        raise ConsoleError(f"Cannot reach Redis at {redis_client.display_url()}: {exc}") from exc


async def watch_count(screen: Screen, audience: tuple[str, ...] = protocol.AUDIENCE_EVERYONE) -> None:
    """Print "Total clients: N" whenever the global count changes, at most once per interval;
    with an audience, how many of them it reaches too ("Total clients: N (M in group:ops)")."""
    presence = group_presence(redis_client.shared_client())
    last: tuple[int, int] | None = None
    while True:
        try:
            total = await presence.total()
            reached = (
                total if audience == protocol.AUDIENCE_EVERYONE else await presence.audience_total(audience)
            )
        except (RedisError, OSError) as exc:
            logger.debug("Count unavailable: %s", exc)
        else:
            if (total, reached) != last:
                named = (
                    "" if audience == protocol.AUDIENCE_EVERYONE else f" ({reached} in {', '.join(audience)})"
                )
                screen.notice(f"Total clients: {total}{named}")
                last = (total, reached)
        await asyncio.sleep(settings.BROADCAST_COUNT_INTERVAL)


def line_reader(stdin: IO[str], *, interactive: bool) -> Callable[[], Awaitable[str]]:
    """Return a coroutine function that reads one line, raising EOFError at the end."""
    if interactive:
        import readline  # noqa: F401  (enables line editing and history for input())

        return lambda: run_as_daemon(input, PROMPT)
    # The bytes, where there are any (a pipe), so lines that are not UTF-8 reach validation.
    reader = NonFileStreamReader(getattr(stdin, "buffer", stdin))

    async def read() -> str:
        # Not aioconsole.ainput: it drops a last line that has no newline.
        data: bytes = await reader.readline()
        if not data:
            raise EOFError
        # Bytes that are not UTF-8 stay as surrogates: publish() refuses that line with a message.
        return data.decode("utf-8", "surrogateescape").rstrip("\r\n")

    return read


async def take_back(*, id: str, sender: str) -> str:
    """Retract broadcast `id`; return what to tell the operator."""
    await check_redis()
    try:
        done = await retract(id=id, sender=sender)
    except BroadcastError as exc:
        raise ConsoleError(f"Not retracted: {exc}") from exc
    if not done.seq:
        return f"Retracted already, by {done.by} at {done.time}."
    return f"Retracted (retraction #{done.seq})."


async def run(*, stdin: IO[str], screen: Screen, sender: str, message: str | None,
              options: Options = Options()) -> Tally:  # fmt: skip
    """Publish `message`, or every line of `stdin` until EOF; return what was done."""
    await check_redis()
    tally = Tally()
    if message is not None:
        await _send(message, screen=screen, sender=sender, tally=tally, stop_on_outage=True, options=options)
        return tally
    read = line_reader(stdin, interactive=screen.interactive)
    watcher = asyncio.create_task(watch_count(screen, options.audience)) if screen.interactive else None
    try:
        while True:
            try:
                line = await read()
            except EOFError:
                break
            except UnicodeDecodeError:
                # A terminal's input() decodes strictly: the same refusal as for a piped line.
                screen.error("Not sent: The message is not valid UTF-8 text.")
                tally.refused.append("")
                continue
            if not line.strip():
                continue
            await _send(line, screen=screen, sender=sender, tally=tally,
                        stop_on_outage=not screen.interactive, options=options)  # fmt: skip
    finally:
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
    return tally


async def _send(text: str, *, screen: Screen, sender: str, tally: Tally, stop_on_outage: bool,
                options: Options) -> None:  # fmt: skip
    try:
        await publish(text=text, sender=sender, level=options.level, expires_in=options.expires_in,
                      audience=options.audience)  # fmt: skip
    except BroadcastUnavailable as exc:
        if stop_on_outage:
            raise ConsoleError(f"Not sent: {exc}") from exc
        screen.error(f"Not sent: {exc}")
        tally.refused.append(text)
    except BroadcastError as exc:
        screen.error(f"Not sent: {exc}")
        tally.refused.append(text)
    else:
        tally.sent += 1


def is_interactive(stdin: IO[str]) -> bool:
    """Whether to prompt and show count notices: stdin and stdout are both a terminal."""
    try:
        return stdin.isatty() and sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False
