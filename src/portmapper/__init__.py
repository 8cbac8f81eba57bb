"""portmapper: a reverse TCP tunnel on Twisted."""

__version__ = "0.1.0"
