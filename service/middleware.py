"""Refuse request bodies over the configured size before anything reads them."""

from __future__ import annotations

import falcon


class BodyLimit:
    """Answer 413 for bodies over `max_bytes` and 411 for chunked bodies without a length."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.method not in ("POST", "PUT", "PATCH"):
            return
        if req.content_length is None:
            if req.get_header("Transfer-Encoding"):
                raise falcon.HTTPLengthRequired(description="send a Content-Length header; chunked bodies are not accepted")
            return
        if req.content_length > self.max_bytes:
            raise falcon.HTTPContentTooLarge(
                description=f"the body is {req.content_length} bytes; the limit is {self.max_bytes} bytes",
            )
