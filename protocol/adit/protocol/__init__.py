"""Sans-IO implementation of cloudflared's tunnel wire protocol, shared by the edge and workers.

Nothing in this package performs I/O or reads a clock: bytes go in, events come out, time is
passed in. A test enforces that no module here imports asyncio, socket, ssl, zmq or uvloop.
"""
