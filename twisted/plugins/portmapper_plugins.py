from twisted.application.service import ServiceMaker

portmapper = ServiceMaker(
    "portmapper", "portmapper.server.tap",
    "A reverse TCP tunnel server: public ports carried to clients' networks.", "portmapper")
portmapper_client = ServiceMaker(
    "portmapper-client", "portmapper.client.tap",
    "A reverse TCP tunnel client: carries the server's channels to targets here.",
    "portmapper-client")
