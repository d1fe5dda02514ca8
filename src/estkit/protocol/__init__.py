"""RFC wire formats as pure functions, shared by client and server.

No I/O here: everything a peer sends is parsed in this package, and bad input
becomes a :class:`estkit.errors.BadRequest` here.
"""
