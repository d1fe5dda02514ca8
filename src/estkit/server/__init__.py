"""The EST HTTPS server (aiohttp): routes, TLS, authentication, wire rules."""
