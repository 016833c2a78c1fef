"""The site with a Twisted whose TCP transport renamed the count of bytes it holds unsent (as a
future release might): the server must refuse to start, naming Twisted. For tests.

A stand-in for a release that cannot be installed here: each new transport moves the value to
another name, as such a release would."""

from twisted.internet import abstract

from broadcast_site.settings import *  # noqa: F403

_init = abstract.FileDescriptor.__init__


def _renamed(self, *args, **kwargs):  # type: ignore[no-untyped-def]
    _init(self, *args, **kwargs)
    self._pendingLength = self.__dict__.pop("_tempDataLen")


abstract.FileDescriptor.__init__ = _renamed  # type: ignore[method-assign]
