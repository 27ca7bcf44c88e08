"""DICOMweb (PS3.18): QIDO-RS, WADO-RS and STOW-RS over the archive, plus a browse page.

An ASGI app on Starlette (:func:`build_app`), served by uvicorn inside the
server's own asyncio loop (:func:`serve_http`, :class:`HttpServer`). It reads
the same index as every other door and stores through the same ingest as
C-STORE: no second copy of anything. :class:`HttpSecurity` guards it:
identities and rights from the policy file, HTTPS, CORS, access log, read audit.
"""

from dicomstore.http.app import build_app
from dicomstore.http.security import HttpSecurity
from dicomstore.http.server import HttpServer, serve_http

__all__ = ["HttpSecurity", "HttpServer", "build_app", "serve_http"]
