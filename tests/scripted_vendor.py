"""A sync vendor on a thread of the test process: it answers as the test says and notes when calls came."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# (status, headers) for one call, a 200 carrying the vendor's record; or (status, headers, body).
Answer = tuple[int, dict[str, str]] | tuple[int, dict[str, str], bytes]
RECORD = {"account": "xyz", "balance": 5000}


def served(_request_id: str) -> Answer:
    return 200, {}


class ScriptedVendor:
    """Answer `POST /fetch` through `answer(request_id)`; keep (monotonic time, request_id) of each call."""

    def __init__(self) -> None:
        self.answer: Callable[[str], Answer] = served
        self.calls: list[tuple[float, str]] = []
        self.answered: list[str] = []  # the request_ids whose answer was sent, in order
        vendor = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request_id = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["request_id"]
                vendor.calls.append((time.monotonic(), request_id))
                status, headers, *body = vendor.answer(request_id)
                body = body[0] if body else json.dumps({"request_id": request_id, **RECORD} if status == 200 else {}).encode()
                self.send_response(status)
                for name, value in {**headers, "Content-Type": "application/json", "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                vendor.answered.append(request_id)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/fetch"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def calls_for(self, request_id: str) -> list[float]:
        """Return when the vendor was called for one job."""
        return [at for at, called_for in self.calls if called_for == request_id]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def scripted_vendors(*names: str) -> Iterator[dict[str, ScriptedVendor]]:
    """Run a scripted vendor for each name; close them all afterwards."""
    vendors = {name: ScriptedVendor() for name in names}
    try:
        yield vendors
    finally:
        for vendor in vendors.values():
            vendor.close()
