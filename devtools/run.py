"""`make run`: start the whole service in the foreground through honcho and Procfile.dev.

Starts embedded Redis-protocol and MongoDB-wire servers for whichever of REDIS_URL and
MONGODB_URI is unset, keeps their data and a generated ENCRYPTION_KEY under var/, and stops
everything on Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from cryptography.fernet import Fernet

from devtools.stores import free_port, port_is_open

ROOT = Path(__file__).resolve().parent.parent
VAR = Path(os.environ.get("VAR_DIR", ROOT / "var"))
APP_PROCESSES = ["web", "worker", "clock", "vendor-sync", "vendor-async"]
PREFERRED_REDIS_PORT = 6380
PREFERRED_MONGODB_PORT = 27018


def pick_port(preferred: int) -> int:
    """Use the preferred development port unless something else holds it."""
    return free_port() if port_is_open(preferred) else preferred


def encryption_key() -> str:
    """Return ENCRYPTION_KEY, or the development key kept in var/ (made on first run)."""
    if os.environ.get("ENCRYPTION_KEY"):
        return os.environ["ENCRYPTION_KEY"]
    key_file = VAR / "encryption.key"
    if not key_file.exists():
        key_file.write_bytes(Fernet.generate_key())
        key_file.chmod(0o600)
    return key_file.read_text().strip()


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
    env["ENCRYPTION_KEY"] = encryption_key()
    env["VAR_DIR"] = str(VAR)
    # Every process of this run reports into one fresh metrics folder (see service/metrics.py).
    metrics = VAR / "metrics"
    shutil.rmtree(metrics, ignore_errors=True)
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    # Procfile commands (gunicorn, dramatiq, python) come from this virtualenv.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    print(f"vendorfetch: API on http://127.0.0.1:{port}, Redis {env['REDIS_URL']}, MongoDB {env['MONGODB_URI']}", flush=True)
    argv = [sys.executable, "-m", "honcho", "start", "-f", str(ROOT / "Procfile.dev"), "-d", str(ROOT), "-p", port, *processes]
    os.execve(sys.executable, argv, env)


if __name__ == "__main__":
    main()
