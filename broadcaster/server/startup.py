"""What a server process does once, before it accepts connections."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import sys
import threading

from redis.exceptions import RedisError

from broadcaster.backend import redis_client
from broadcaster.compat import autobahn, daphne, twisted
from broadcaster.compat.twisted import running_reactor
from broadcaster.layer import FanoutChannelLayer, fast_path_problem, verify_fast_path
from broadcaster.sending import log_health
from broadcaster.server import body_limit, drain, gc_policy, guard
from broadcaster.server.admission import admission
from broadcaster.server.input_queue import InputQueue

logger = logging.getLogger(__name__)


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard limit; return the new soft limit.

    Each WebSocket is a file descriptor: a 1,024 default would cap a process silently.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            logger.warning("Could not raise the open-file limit from %d: %s", soft, exc)
    return soft


def check_dependencies() -> None:
    """Check the internals of Twisted, autobahn and daphne the server relies on
    (broadcaster/compat/). Under daphne, refuse to start when one the slow-consumer bound or
    the request body limit needs is missing: no fallback replaces them. In another process
    (another ASGI server imported the application), say so and keep daphne's fast paths off.
    What only costs something when missing is said once."""
    try:
        import daphne as _  # noqa: F401
    except ImportError:
        return  # not installed: no daphne path is ever taken
    serving = daphne.serving()  # first: the checks import daphne's runserver module
    problems = [found for found in (twisted.problem(), autobahn.problem(), daphne.problem()) if found]
    for notice in (autobahn.optional_problem(), daphne.optional_problem()):
        if notice:
            logger.warning(
                "%s: the server runs, at some cost; install the versions in requirements.txt", notice
            )
    if not problems:
        return
    message = (
        f"This server cannot run with the installed packages: {'; '.join(problems)}. "
        "Install the versions pinned in requirements.txt."
    )
    if not serving:
        logger.error("%s (Receivers under daphne in this process would use the plain ASGI path.)", message)
        daphne.mark_unusable()
        return
    _refuse(message)


def limit_request_bodies(*, all_bodies: bool) -> None:
    """Refuse oversized request bodies before daphne stores them (broadcaster/server/body_limit.py):
    the publish API's always, every other path's too with `all_bodies`."""
    body_limit.install(limit_others=all_bodies)


def guard_connections(open_file_limit: int) -> None:
    """Deadlines and answered limits for every connection's request, and the descriptors kept
    for Redis and the database (broadcaster/server/guard.py)."""
    problem = guard.install(open_file_limit)
    if problem is not None:
        logger.warning("Requests have no deadline and the open-file reserve is not kept: %s", problem)


def check_channel_layer() -> None:
    """Check, once at start-up, that broadcasts reach the layer's fast path.

    Without the fast-path internals in the installed channels_redis, the layer runs as the
    plain pub/sub layer (slower, nothing lost): said in one line. With them, one message
    goes through Redis to a private group: if it does not reach the fast path, receivers
    would get nothing, so the process refuses to start.
    """
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    if not isinstance(layer, FanoutChannelLayer):
        return  # system check broadcaster.W001 says what this costs
    problem = fast_path_problem()
    if problem is not None:
        logger.error(
            "The fan-out fast path is off: %s. Receivers get broadcasts through per-consumer "
            "dispatch (slower). Install the pinned channels-redis.",
            problem,
        )
        return
    outcome: list[BaseException | bool] = []

    def run() -> None:
        try:
            outcome.append(asyncio.run(verify_fast_path(layer)))
        except BaseException as exc:
            outcome.append(exc)

    # In a thread with its own event loop: daphne's loop is not running yet, and must stay
    # the main thread's current loop.
    thread = threading.Thread(target=run, name="fast-path-check")
    thread.start()
    thread.join()
    [result] = outcome
    if result is True:
        logger.info("Fan-out fast path verified through Redis")
    elif isinstance(result, (RedisError, OSError)):
        logger.warning("Could not verify the fan-out fast path at start-up (Redis unreachable: %s); "
                       "it is verified once Redis answers", result)  # fmt: skip
        _verify_when_redis_answers(layer)
    elif isinstance(result, BaseException):
        raise result
    else:
        _refuse(FAST_PATH_UNREACHED)


FAST_PATH_UNREACHED = (
    "A broadcast sent through Redis did not reach the channel layer's fan-out fast "
    "path: receivers would get nothing. The installed channels-redis does not behave "
    "as the pinned version does; install the version in requirements.txt."
)
# How often a process that could not verify the fast path at start-up tries again.
VERIFY_RETRY = 2.0
_later: set[asyncio.Task[None]] = set()


def _verify_when_redis_answers(layer: FanoutChannelLayer) -> None:
    """Verify the fast path once the reactor runs and Redis answers; a process whose fast path
    is then found unreached exits (its receivers would get nothing; a supervisor restarts it,
    and at start-up with Redis up it refuses to run)."""
    reactor = running_reactor()
    if reactor is None:
        return

    def start() -> None:
        task = asyncio.get_running_loop().create_task(_verify_later(layer))
        _later.add(task)
        task.add_done_callback(_later.discard)

    reactor.callWhenRunning(lambda: reactor.callLater(0, start))  # (inside the running loop)


async def _verify_later(layer: FanoutChannelLayer) -> None:
    while True:
        await asyncio.sleep(VERIFY_RETRY)
        try:
            async with asyncio.timeout(VERIFY_RETRY * 5):  # a Redis that hangs: try again
                reached = await verify_fast_path(layer)
        except (RedisError, OSError, TimeoutError):
            continue
        if reached:
            logger.info("Fan-out fast path verified through Redis (after start-up: Redis was unreachable)")
            return
        logger.critical(FAST_PATH_UNREACHED)
        sys.stderr.write(FAST_PATH_UNREACHED + "\n")
        sys.stderr.flush()
        os._exit(1)


def _refuse(message: str) -> None:
    """Stop this process before it serves: SystemExit on the main thread; off it (runserver
    loads the application in its autoreloader's thread, where SystemExit would end only that
    thread and leave a process serving nothing), the message on stderr and exit status 1."""
    logger.critical(message)
    if threading.current_thread() is not threading.main_thread():
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
        os._exit(1)
    raise SystemExit(message)


def prepare_server(*, limit_all_bodies: bool = False) -> None:
    """Called when the ASGI application is imported by daphne or runserver (through
    broadcaster.asgi.with_broadcasts)."""
    gc_policy.configure()
    check_dependencies()
    autobahn.lazy_debug_text()
    daphne.replace_input_queue(InputQueue)  # (a daphne without the one checked: said above)
    limit = raise_open_file_limit()
    ceiling = admission.configure(limit)
    logger.info("Open-file limit %d; at most %d receivers (BROADCAST_MAX_CONNECTIONS)", limit, ceiling)
    # Starts the embedded Redis now when it is the one in use, so a problem shows at start-up.
    redis_client.redis_url()
    logger.info("Using Redis at %s", redis_client.display_url())
    log_health.check_at_start()
    limit_request_bodies(all_bodies=limit_all_bodies)
    guard_connections(limit)
    drain.install_when_running()
    check_channel_layer()
