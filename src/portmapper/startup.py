"""
Ending a twistd process whose service could not start (a port in use, an
unreadable data directory): say why in one sentence and exit non-zero.
"""

import os
import sys

from twisted.logger import Logger

log = Logger()


def exit_when_failed(reactor, ready, what):
    """If ``ready`` fails, log ``what: why``, stop ``reactor`` and exit with status 1."""

    def failed(failure):
        log.critical("{what}: {why}", what=what, why=failure.getErrorMessage())
        reactor.addSystemEventTrigger("after", "shutdown", _exit, 1)
        if reactor.running:
            reactor.stop()
        else:
            reactor.callWhenRunning(reactor.stop)

    ready.addErrback(failed)


def _exit(status):
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
