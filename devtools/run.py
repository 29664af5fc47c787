"""`make run`: start the whole service in the foreground through honcho and Procfile.dev.

Starts embedded Redis-protocol and MongoDB-wire servers for whichever of REDIS_URL and
MONGODB_URI is unset, keeps their data, a generated ENCRYPTION_KEY and a generated dashboard
ADMIN_TOKEN under var/, and stops everything on Ctrl-C. It sets AUTH=open unless AUTH is given, so
that a caller without an API key is the client `public` and the README's curl examples work as they are.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from cryptography.fernet import Fernet

from devtools.stores import free_port, port_is_open

ROOT = Path(__file__).resolve().parent.parent
VAR = Path(os.environ.get("VAR_DIR", ROOT / "var"))
APP_PROCESSES = ["web", "worker", "callbacks", "clock", "vendor-sync", "vendor-async"]
PREFERRED_REDIS_PORT = 6380
PREFERRED_MONGODB_PORT = 27018
ADMIN_TOKEN_FILE = "admin.token"


def pick_port(preferred: int) -> int:
    """Use the preferred development port unless something else holds it."""
    return free_port() if port_is_open(preferred) else preferred


def without_password(url: str) -> str:
    """Hide the password of a data-store URL before printing it."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


def secret(name: str, file_name: str, generate: Callable[[], str]) -> str:
    """Return the environment's secret `name`, or the development one kept in var/ (made on first run)."""
    if os.environ.get(name):
        return os.environ[name]
    secret_file = VAR / file_name
    if not secret_file.exists():
        secret_file.write_text(generate())
        secret_file.chmod(0o600)
    return secret_file.read_text().strip()


def main() -> None:
    """Work out the environment and the process list, then hand over to honcho."""
    VAR.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    processes = list(APP_PROCESSES)
    if not env.get("REDIS_URL"):
        env["DEV_REDIS_PORT"] = str(pick_port(PREFERRED_REDIS_PORT))
        env["REDIS_URL"] = f"redis://127.0.0.1:{env['DEV_REDIS_PORT']}/0"
        processes.append("redis")
    if not env.get("MONGODB_URI"):
        env["DEV_MONGODB_PORT"] = str(pick_port(PREFERRED_MONGODB_PORT))
        env["MONGODB_URI"] = f"mongodb://127.0.0.1:{env['DEV_MONGODB_PORT']}/vendorfetch?retryWrites=false&directConnection=true"
        processes.append("mongodb")
    port = env.setdefault("PORT", "4000")
    env.setdefault("PUBLIC_URL", f"http://127.0.0.1:{port}")
    env["ENCRYPTION_KEY"] = secret("ENCRYPTION_KEY", "encryption.key", lambda: Fernet.generate_key().decode())
    env["ADMIN_TOKEN"] = secret("ADMIN_TOKEN", ADMIN_TOKEN_FILE, lambda: secrets.token_urlsafe(32))
    # Lets the dashboard's retry be tried here; deployments erase failed jobs' payloads unless they opt in.
    env.setdefault("KEEP_FAILED_PAYLOADS", "true")
    # Development only: no API key needed; deployments default to AUTH=keys.
    env.setdefault("AUTH", "open")
    # Client callbacks may reach this machine's own endpoints, as local development needs.
    env.setdefault("CALLBACK_ALLOW_NETWORKS", "127.0.0.0/8,::1/128")
    env["VAR_DIR"] = str(VAR)
    # Every process of this run reports into one fresh metrics folder (see service/metrics.py).
    metrics = VAR / "metrics"
    shutil.rmtree(metrics, ignore_errors=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    # Procfile commands (gunicorn, dramatiq, python) come from this virtualenv.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    print(f"vendorfetch: API on http://127.0.0.1:{port}, Redis {without_password(env['REDIS_URL'])}, "
          f"MongoDB {without_password(env['MONGODB_URI'])}", flush=True)
    where = "ADMIN_TOKEN" if os.environ.get("ADMIN_TOKEN") else VAR / ADMIN_TOKEN_FILE
    if env["AUTH"] == "open":
        print("vendorfetch: AUTH=open, requests without an API key act as the client 'public'", flush=True)
    print(f"vendorfetch: dashboard on http://127.0.0.1:{port}/dashboard (log in with the token in {where})", flush=True)
    argv = [sys.executable, "-m", "honcho", "start", "-f", str(ROOT / "Procfile.dev"), "-d", str(ROOT), "-p", port, *processes]
    os.execve(sys.executable, argv, env)


if __name__ == "__main__":
    main()
