"""Security headers on every HTTP response of the relay.

The console (`/`, `/static/*`, `/cloudops-events.js`) gets a strict Content Security Policy: its
scripts and styles are files of the relay (no inline script or style: the terminal's 24-bit
colours are classes added through the CSSOM, which CSP does not govern), it connects only to
its own origin (`'self'` covers the same origin's WebSocket), and it may not be framed. API
responses are data, never a page: `default-src 'none'`. Every response has `nosniff`,
`no-referrer` and `X-Frame-Options: DENY` (for browsers older than `frame-ancestors`).
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'"
COMMON = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def is_console(path: str) -> bool:
    return path == "/" or path.startswith("/static/") or path == "/cloudops-events.js"


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = CONSOLE_CSP if is_console(str(scope.get("path", ""))) else API_CSP

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in COMMON.items():
                    headers.setdefault(name, value)
                headers.setdefault("Content-Security-Policy", csp)
            await send(message)

        await self.app(scope, receive, send_with_headers)
