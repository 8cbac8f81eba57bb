"""
Start the tunnel's processes without pyOpenSSL.

pyOpenSSL is installed with the project (treq requires ``twisted[tls]``),
and when it is installed Twisted loads it into every process: its ``tcp``
module (every reactor's), ``endpoints`` and ``web.client`` import it at
once, for ``startTLS`` and for their own TLS.  That is about 12 MiB per
process at rest, for features the tunnel does not use: the link's TLS and
outgoing HTTPS run on the standard library's ``ssl``
(:mod:`portmapper.transport.tls`, :mod:`portmapper.transport.web`).

:func:`without_pyopenssl` makes ``import OpenSSL`` fail, as it would where
pyOpenSSL is absent, while the body runs; Twisted's modules then load
without their pyOpenSSL parts, and stay so once imported.  The twistd
plugins (``twisted/plugins/portmapper_plugins.py``) import the server's
and the client's modules, and the reactor's, inside it.  Afterwards
``import OpenSSL`` works again for whoever asks for it.  Where OpenSSL is
loaded already (a process that imported Twisted's TLS before), it does
nothing.
"""

import contextlib
import sys


@contextlib.contextmanager
def without_pyopenssl():
    """While the body runs, ``import OpenSSL`` fails as if pyOpenSSL were not installed."""
    if "OpenSSL" in sys.modules:  # loaded already (or blocked by an outer call)
        yield
        return
    sys.modules["OpenSSL"] = None  # the import system's "not found" marker
    try:
        yield
    finally:
        if "OpenSSL" in sys.modules and sys.modules["OpenSSL"] is None:
            del sys.modules["OpenSSL"]
