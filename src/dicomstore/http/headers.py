"""What every HTTP answer tells the browser about itself (review38web #3).

Answers hold patient data (names and IDs in pages, JSON and URLs; the images):

- ``Cache-Control: no-store``: none written to a shared workstation's disk
  cache (an answer that sets its own caching keeps it);
- ``X-Content-Type-Options: nosniff``: a data set or text is never run as a
  page or script, whatever bytes it holds;
- ``Referrer-Policy: no-referrer``: URLs (Patient IDs, UIDs) do not follow a
  link to another site;
- ``Cross-Origin-Resource-Policy: same-origin`` unless ``--http-cors-origin``
  names viewers elsewhere: a page elsewhere cannot embed an image or thumbnail
  (an oracle of which UIDs exist, with the browser's credentials);
- on the browse pages (HTML): ``Content-Security-Policy`` allowing only their
  own inline style and this server's images and form, and no framing
  (``frame-ancestors 'none'``, ``X-Frame-Options: DENY``: no clickjacking of
  the download links).
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: the browse pages: inline <style>, <img> and <form> of this server, nothing else
PAGE_POLICY = (
    "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class SecurityHeaders:
    """ASGI middleware: the headers above on every answer."""

    def __init__(self, app: ASGIApp, cross_origin: bool = False) -> None:
        self.app = app
        self.cross_origin = cross_origin

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("cache-control", "no-store")
                headers.setdefault("x-content-type-options", "nosniff")
                headers.setdefault("referrer-policy", "no-referrer")
                if not self.cross_origin:
                    headers.setdefault("cross-origin-resource-policy", "same-origin")
                if headers.get("content-type", "").startswith("text/html"):
                    headers.setdefault("content-security-policy", PAGE_POLICY)
                    headers.setdefault("x-frame-options", "DENY")
            await send(message)

        await self.app(scope, receive, sending)
