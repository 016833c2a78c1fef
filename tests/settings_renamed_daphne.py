"""The site with a daphne whose HTTP factory no longer builds its requests from the module's
`WebRequest` (as a future release might): the body limit could not be put in front, so the
server must refuse to start, naming daphne. For tests (a stand-in for a release that cannot be
installed here)."""

from daphne import http_protocol

from broadcast_site.settings import *  # noqa: F403

http_protocol.HttpRequest = http_protocol.WebRequest  # type: ignore[attr-defined]
del http_protocol.WebRequest
