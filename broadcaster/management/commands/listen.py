"""`manage.py listen [URL]`: the terminal receiver."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from broadcaster import protocol
from broadcaster.listener import listen


class Command(BaseCommand):
    help = "Connect to the broadcast server and print every message; reconnects by itself."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "url",
            nargs="?",
            default=None,
            help="WebSocket URL (default: ws://127.0.0.1:$PORT/ws/broadcast/, PORT=8000).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        url = options["url"] or f"ws://127.0.0.1:{os.environ.get('PORT', '8000')}{protocol.RECEIVER_PATH}"

        def out(line: str) -> None:
            self.stdout.write(line)
            self.stdout.flush()

        def status(line: str) -> None:
            self.stderr.write(line)
            self.stderr.flush()

        try:
            asyncio.run(listen(url, out=out, status=status))
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        except KeyboardInterrupt:
            status("Stopped.")
