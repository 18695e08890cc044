"""The HTTP floor for the tracking endpoints: a bare WSGI app on the same gunicorn.

It answers every request with the 43-byte pixel and no framework at all, so its latency
is what the server, the loopback and the load generator cost by themselves.
"""

from __future__ import annotations

import base64

PIXEL_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
HEADERS = [
    ("Content-Type", "image/gif"),
    ("Content-Length", str(len(PIXEL_GIF))),
    ("Cache-Control", "no-store"),
]


def application(environ, start_response):
    # Read the body of a POST, as the real endpoints must, so keep-alive stays in step.
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length:
        environ["wsgi.input"].read(length)
    start_response("200 OK", HEADERS)
    return [PIXEL_GIF]
