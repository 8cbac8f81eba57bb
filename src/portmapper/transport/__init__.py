"""
The Twisted side of a link and of a channel's sockets: the transport tricks
that make the data path fast (writing to idle sockets at once, large reads
and writes, TLS on memory buffers), below the protocol layer, which never
imports them.
"""
