"""Client endpoints that misbehave on purpose, on threads of the test process, on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time


class HostileEndpoint:
    """Accept connections and answer each as `behave(connection)` does; count the bytes it managed to send."""

    def __init__(self, behave) -> None:
        self.behave = behave
        self.sent_bytes = 0
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"
        self.closed = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        with connection:
            try:
                connection.recv(65536)  # the request; its body is small
                self.behave(self, connection)
            except OSError:
                pass  # the service hung up, as it should

    def send(self, connection: socket.socket, data: bytes) -> None:
        connection.sendall(data)
        self.sent_bytes += len(data)

    def close(self) -> None:
        self.closed.set()
        self.listener.close()


def trickle(endpoint: HostileEndpoint, connection: socket.socket) -> None:
    """Answer one byte every half second, status line and headers included, for ever."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1_000_000
    for byte in answer:
        if endpoint.closed.is_set():
            return
        endpoint.send(connection, bytes([byte]))
        time.sleep(0.5)


def flood(endpoint: HostileEndpoint, connection: socket.socket) -> None:
    """Answer 200 with an endless body, as fast as the service reads it."""
    endpoint.send(connection, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
    while not endpoint.closed.is_set():
        endpoint.send(connection, chunk)
