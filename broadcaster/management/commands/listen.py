"""`manage.py listen [URL]`: the terminal receiver."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from broadcaster import protocol
from broadcaster.listener import Refused, listen, listen_sse, visible


def local_server_url(environ: Mapping[str, str]) -> str:
    """The receiver URL of the server `make run` starts with the same HOST and PORT."""
    host = environ.get("HOST", "").strip() or "127.0.0.1"
    if host in {"0.0.0.0", "::", "[::]"}:  # noqa: S104 - a server on every address: use loopback
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"ws://{host}:{environ.get('PORT', '').strip() or '8000'}{protocol.RECEIVER_PATH}"


class Command(BaseCommand):
    help = "Connect to the broadcast server and print every message; reconnects by itself."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "url",
            nargs="?",
            default=None,
            help="Receiver URL, ws:// or wss:// (with --transport sse, the SSE endpoint beside it, or an "
            "http(s) URL; default: the local server's, from HOST and PORT in the environment "
            "or .env, as `make run` uses them: ws://127.0.0.1:8000/ws/broadcast/ when unset).",
        )
        parser.add_argument(
            "--token",
            default=None,
            help="A receiver token's secret (manage.py create_receiver_token): hear what its user "
            "would. Default: BROADCAST_RECEIVER_TOKEN from the environment; without one, anonymous.",
        )

        parser.add_argument(
            "--transport",
            choices=["websocket", "sse"],
            default="websocket",
            help="websocket (default), or sse: Server-Sent Events over plain HTTP, for networks whose "
            "proxy strips the WebSocket upgrade.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        url = options["url"] or local_server_url(os.environ)

        def out(line: str) -> None:
            self.stdout.write(line)
            self.stdout.flush()

        def status(line: str) -> None:
            self.stderr.write(visible(line))  # close reasons and errors come from the server
            self.stderr.flush()

        token = options["token"] or os.environ.get("BROADCAST_RECEIVER_TOKEN", "").strip() or None
        try:
            run = listen_sse if options["transport"] == "sse" else listen
            asyncio.run(run(url, out=out, status=status, token=token))
        except (ValueError, Refused) as exc:
            raise CommandError(str(exc)) from exc
        except KeyboardInterrupt:
            status("Stopped.")
