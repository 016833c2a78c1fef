"""`python -m broadcaster.server.reuseport HOST PORT DAPHNE [ARGS...]`: bind HOST:PORT with SO_REUSEPORT
and exec daphne on that socket (`--fd N`). `make serve` starts one per worker, under supervisord.

Each worker gets its own listening socket on the shared port, and the kernel spreads new
connections over them evenly (by address hash). With one socket shared by every worker, as
supervisord's fcgi-program gives, Twisted in one worker accepts up to a hundred pending
connections per wakeup: a burst of 100 clients all landed on one of two workers.
"""

from __future__ import annotations

import os
import socket
import sys

BACKLOG = 1024


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port that other processes may bind too (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        sys.exit("usage: python -m broadcaster.server.reuseport HOST PORT DAPHNE [ARGS...]")
    host, port, command = argv[0], int(argv[1]), argv[2:]
    try:
        sock = bind(host, port)
    except OSError as exc:
        sys.exit(f"Error: cannot listen on {host}:{port}: {exc}")
    # Tells the drain (broadcaster/server/drain.py) that other workers may share this port.
    os.environ["BROADCAST_REUSEPORT"] = "1"
    # The daphne command comes from supervisord.conf, not from untrusted input.
    os.execv(command[0], [*command[:1], "--fd", str(sock.fileno()), *command[1:]])  # noqa: S606


if __name__ == "__main__":
    main(sys.argv[1:])
