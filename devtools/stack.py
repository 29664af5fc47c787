"""Run the real processes of the service (API, worker, clock, mock vendors) for tests and benchmarks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from devtools.stores import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def wait_until(predicate, timeout_s: float, what: str = "the condition", interval_s: float = 0.02):
    """Poll `predicate` until it returns something truthy; fail with `what` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


class ManagedProcess:
    """A child process in its own session, logging to a file, stopped like a platform would."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.process = subprocess.Popen(
            argv, env=env, cwd=ROOT, start_new_session=True,
            stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def logged_events(self, request_id: str | None = None) -> list[dict[str, Any]]:
        """Return the JSON lines the process has finished writing to its log, or only those about one job."""
        text = self.log()
        events = [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines() if line.startswith("{")]
        return [event for event in events if request_id is None or event.get("request_id") == request_id]

    def terminate(self, timeout_s: float = 20.0) -> None:
        """Send SIGTERM to the process only (not its group), then SIGKILL the group if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        """SIGKILL the whole process group at once, as a crash would."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


class Stack:
    """The service's processes on free ports, sharing one environment."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = {**os.environ, **env, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.log_dir = log_dir
        self.processes: list[ManagedProcess] = []

    def start(self, name: str, argv: list[str], health_url: str | None = None, timeout_s: float = 30.0) -> ManagedProcess:
        """Start a process and, if given, wait until its health URL answers 200."""
        process = ManagedProcess(name, argv, self.env, self.log_dir)
        self.processes.append(process)
        if health_url:
            wait_until(lambda: answers(health_url) or process.process.poll() is not None, timeout_s, f"{name} to answer")
            if process.process.poll() is not None:
                raise AssertionError(f"{name} exited early:\n{process.log()[-3000:]}")
        return process

    def process(self, name: str) -> ManagedProcess:
        """Return the running process started under `name`."""
        return next(process for process in self.processes if process.name == name)

    def migrate(self) -> None:
        """Run the release step, as a deployment does before it starts the processes."""
        subprocess.run([sys.executable, "-m", "service.migrate"], env=self.env, cwd=ROOT, check=True, capture_output=True, timeout=60)

    def start_api(self, port: int) -> ManagedProcess:
        """Migrate the store, then start the API and wait until it answers."""
        self.migrate()
        argv = [str(BIN / "gunicorn"), "--config", "service/gunicorn_conf.py", "--workers", "2", "service.app:create_app()"]
        self.env["PORT"] = str(port)
        return self.start("api", argv, f"http://127.0.0.1:{port}/healthz")

    def start_worker(self, name: str = "worker", processes: int = 1, threads: int = 4, queues: tuple[str, ...] = ()) -> ManagedProcess:
        """Start a worker on the given queues (default: all of them)."""
        argv = [str(BIN / "dramatiq"), "actors.worker", "--processes", str(processes), "--threads", str(threads)]
        return self.start(name, [*argv, "--queues", *queues] if queues else argv)

    def start_clock(self, name: str = "clock") -> ManagedProcess:
        return self.start(name, [sys.executable, "-m", "scheduler.clock"])

    def start_mock(self, kind: str, port: int, *flags: str, name: str | None = None) -> ManagedProcess:
        argv = [sys.executable, "-m", f"vendors.mock_{kind}", "--port", str(port), *flags]
        return self.start(name or f"vendor-{kind}", argv, f"http://127.0.0.1:{port}/healthz")

    def stop(self, name: str | None = None) -> None:
        """Stop the processes, all of them or those started under `name`, the newest first."""
        stopping = [process for process in self.processes if name is None or process.name == name]
        for process in reversed(stopping):
            process.terminate()
        self.processes = [process for process in self.processes if process not in stopping]


def vendors_toml(sync_port: int, async_port: int, **overrides: str) -> str:
    """Write a registry of the two mock vendors on their test ports."""
    sync_extra = overrides.get("sync", "")
    async_extra = overrides.get("async", 'webhook_auth = "token"')
    return f"""
[vendors.sync]
mode = "sync"
url = "http://127.0.0.1:{sync_port}/fetch"
rate_limit = "6000/minute"
max_retries = 3
{sync_extra}

[vendors.async]
mode = "async"
url = "http://127.0.0.1:{async_port}/fetch"
rate_limit = "6000/minute"
webhook_timeout_s = 60
{async_extra}
"""


def free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def service_env(redis_url: str, mongodb_uri: str, registry: Path, api_port: int) -> dict[str, str]:
    """Return the settings the API and workers of a stack share, with a fresh encryption key."""
    from cryptography.fernet import Fernet

    return {
        "REDIS_URL": redis_url, "MONGODB_URI": mongodb_uri, "VENDORS_FILE": str(registry),
        "ENCRYPTION_KEY": Fernet.generate_key().decode(), "PUBLIC_URL": f"http://127.0.0.1:{api_port}",
        "AUTH": "open",
        # The tests' workers keep the CPU priority of the tests: beside other work on the machine,
        # a suite must not starve its own workers.
        "WORKER_NICE": "0",
    }


class CallbackReceiver:
    """A webhook endpoint on a thread that records each call and answers scripted statuses."""

    def __init__(self, statuses: tuple[int, ...] = ()) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        statuses_left = list(statuses)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.calls.append((dict(self.headers), body))
                self.send_response(statuses_left.pop(0) if statuses_left else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/hook?token=t"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
