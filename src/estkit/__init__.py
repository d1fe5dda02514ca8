"""estkit: an EST (RFC 7030) server, certificate authority and client."""

__version__ = "0.1.0"
