from twisted.application.service import ServiceMaker


class _Lean(ServiceMaker):
    """
    A ServiceMaker that imports its module, and the reactor's modules,
    without pyOpenSSL (see portmapper.transport.lean): the tunnel uses the
    standard library's ssl, and this keeps about 12 MiB out of the process.
    """

    @property
    def options(self):
        from portmapper.transport.lean import without_pyopenssl

        with without_pyopenssl():
            import twisted.internet.posixbase  # noqa: F401 (what every reactor stands on; none installed)

            return super().options


portmapper = _Lean(
    "portmapper", "portmapper.server.tap",
    "A reverse TCP tunnel server: public ports carried to clients' networks.", "portmapper")
portmapper_client = _Lean(
    "portmapper-client", "portmapper.client.tap",
    "A reverse TCP tunnel client: carries the server's channels to targets here.",
    "portmapper-client")
