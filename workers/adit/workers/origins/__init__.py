"""Reaching origins: dialing, the HTTP/1.1 client, the keep-alive pool and built-in origins."""
