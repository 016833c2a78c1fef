"""`manage.py broadcast`: the operator console (the original server's input loop)."""

from __future__ import annotations

import asyncio
import getpass
import logging
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from broadcaster import protocol
from broadcaster.sending import console
from broadcaster.sending.errors import BroadcastError
from broadcaster.sending.publish import check_audience, validate_options


class Command(BaseCommand):
    help = (
        "Read lines from the console and broadcast each to every connected client. "
        "Shows the live client count on a terminal; sends every line and exits at the "
        "end of piped input."
    )

    # Tests (and callers of call_command) may pass stdin=, as with createsuperuser.
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--message", "-m", help="Send this one message and exit.")
        parser.add_argument(
            "--level",
            choices=protocol.LEVELS,
            default=protocol.LEVEL_INFO,
            help="How urgent every message of this run is; receivers style each level distinctly.",
        )
        parser.add_argument(
            "--expires-in",
            type=float,
            metavar="SECONDS",
            help="Receivers hide each message this many seconds after it is sent.",
        )
        parser.add_argument(
            "--audience",
            action="append",
            metavar="AUDIENCE",
            help="Who every message of this run is for (repeat for several: the union): everyone, "
            "authenticated, staff, user:<username>, group:<name>, perm:<app_label>.<codename>, or a "
            "kind of BROADCAST_AUDIENCE_KINDS. Default: everyone.",
        )
        parser.add_argument(
            "--retract",
            metavar="ID",
            help="Take back the broadcast with this id (from the log, the API or the page) and exit.",
        )
        parser.add_argument(
            "--sender",
            default=None,
            help="Name recorded as the sender (default: console:<your OS user name>).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        log = logging.getLogger("broadcaster")
        level = log.level
        if options["verbosity"] < 2:
            # The operator sees results and problems as plain lines; log lines are for -v 2.
            log.setLevel(logging.ERROR)
        try:
            self._run(options)
        finally:
            log.setLevel(level)  # call_command runs in-process: leave logging as it was

    def _run(self, options: dict[str, Any]) -> None:
        stdin = options.get("stdin") or sys.stdin
        screen = console.Screen(self.stdout, self.stderr, interactive=console.is_interactive(stdin))
        sender = options["sender"] or f"console:{getpass.getuser()}"
        if options["retract"] is not None:
            try:
                self.stdout.write(asyncio.run(console.take_back(id=options["retract"], sender=sender)))
            except console.ConsoleError as exc:
                raise CommandError(str(exc)) from exc
            return
        try:
            level, expires_in = validate_options(level=options["level"], expires_in=options["expires_in"])
            audience = asyncio.run(check_audience(options["audience"]))
        except BroadcastError as exc:
            raise CommandError(str(exc)) from exc
        # A plain tuple: each line is checked again when it is sent (a group deleted during a
        # long console run is refused then, not sent to nobody).
        run_options = console.Options(level=level, expires_in=expires_in, audience=tuple(audience))
        try:
            tally = asyncio.run(console.run(stdin=stdin, screen=screen, sender=sender,
                                            message=options["message"], options=run_options))  # fmt: skip
        except console.ConsoleError as exc:
            raise CommandError(str(exc)) from exc
        except KeyboardInterrupt:
            self.stdout.write("")
            return
        if screen.interactive:
            self.stdout.write("")
        elif options["message"] is None:
            self.stdout.write(f"Sent {tally.sent} message{'s' if tally.sent != 1 else ''}.")
        if tally.refused:
            raise CommandError(f"{len(tally.refused)} line(s) were not sent.")
        if options["message"] is not None:
            self.stdout.write("Sent.")
