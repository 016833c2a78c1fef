"""`manage.py runserver`: daphne's development server, which exits with status 1 when it
cannot listen (daphne's own logs "Address already in use" and then keeps the process alive
under the autoreloader, serving nothing)."""

from __future__ import annotations

import os
import sys
from typing import Any

from daphne.management.commands.runserver import Command as DaphneRunserver
from daphne.server import Server

# Connections the kernel queues for the development server before it accepts them: Twisted's
# default of 50 reset a burst of 300 API posts (`make serve` listens with 1,024 too).
BACKLOG = 1024


class _Server(Server):
    """daphne's server, listening with a deep backlog and remembering why it could not listen."""

    listen_failure: str | None = None

    def __init__(self, *args: Any, endpoints: list[str] | None = None, **kwargs: Any) -> None:
        deep = [f"{e}:backlog={BACKLOG}" if e.startswith("tcp:") and ":backlog=" not in e else e
                for e in endpoints or []]  # fmt: skip
        super().__init__(*args, endpoints=deep, **kwargs)

    def listen_error(self, failure: Any) -> None:
        type(self).listen_failure = failure.getErrorMessage()
        super().listen_error(failure)


class Command(DaphneRunserver):
    server_cls = _Server

    def inner_run(self, *args: Any, **options: Any) -> None:
        super().inner_run(*args, **options)
        if _Server.listen_failure is not None:
            self.stderr.write(f"Error: {_Server.listen_failure} Is another server running there? "
                              "Stop it, or choose another port (PORT=8001 make run).")  # fmt: skip
            self.stderr.flush()
            sys.stdout.flush()
            # This runs in the autoreloader's thread: only the process's exit status reaches
            # the reloader's parent (and make).
            os._exit(1)
