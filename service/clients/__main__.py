"""`python -m service.clients`: add clients, list them, revoke and rotate their keys and callback secrets.

    python -m service.clients add NAME [--weight 1] [--rate 50] [--backlog-cap VENDOR=N ...]
    python -m service.clients list
    python -m service.clients revoke KEY_PREFIX
    python -m service.clients rotate NAME [--callback-secret]

A new key is printed once and stored only as its digest; a new callback secret is printed once and stored
encrypted with ENCRYPTION_KEY, to sign that client's callbacks. Keep both now.
"""

from __future__ import annotations

import argparse
import sys

from service.clients.store import DEFAULT_RATE_PER_S, ClientError, ClientStore
from service.config import Config
from service.store import open_store


def request_rate(text: str) -> int | None:
    if text == "none":
        return None
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a rate is a whole number of requests a second, or none, not {text!r}")
    return int(text)


def backlog_cap(text: str) -> tuple[str, int]:
    vendor, _, count = text.partition("=")
    if not vendor or not count.isdigit():
        raise argparse.ArgumentTypeError(f"a backlog cap is VENDOR=N, not {text!r}")
    return vendor, int(count)


def parser() -> argparse.ArgumentParser:
    commands = argparse.ArgumentParser(prog="python -m service.clients", description=__doc__.splitlines()[0])
    sub = commands.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="create a client and print its first key and callback secret")
    add.add_argument("name")
    add.add_argument("--weight", type=int, default=1, help="its share of each vendor's quota against other clients'")
    add.add_argument("--rate", type=request_rate, default=DEFAULT_RATE_PER_S, help="requests a second it may send, or none")
    add.add_argument("--backlog-cap", type=backlog_cap, action="append", default=[], metavar="VENDOR=N",
                     help="at most N of its jobs wait for VENDOR at once (repeatable)")
    sub.add_parser("list", help="list the clients and their keys (prefixes only)")
    revoke = sub.add_parser("revoke", help="revoke the key shown with this prefix")
    revoke.add_argument("prefix")
    rotate = sub.add_parser("rotate", help="give a client a new key and revoke its others")
    rotate.add_argument("name")
    rotate.add_argument("--callback-secret", action="store_true", help="rotate its callback signing secret instead")
    return commands


def run(clients: ClientStore, args: argparse.Namespace) -> None:
    """Carry out one command, printing what it made."""
    if args.command == "add":
        client, key = clients.add(args.name, weight=args.weight, rate_per_s=args.rate, backlog_caps=dict(args.backlog_cap))
        rate = "no request limit" if client.rate_per_s is None else f"{client.rate_per_s} requests/s"
        print(f"client {client.name}: weight {client.weight}, {rate}, backlog caps {client.backlog_caps or 'none'}")
        print(f"API key (shown once): {key}")
        print(f"callback secret: {client.callback_secret}")
    elif args.command == "list":
        for client in clients.all():
            caps = ", ".join(f"{vendor}={cap}" for vendor, cap in client.backlog_caps.items()) or "none"
            rate = "no request limit" if client.rate_per_s is None else f"{client.rate_per_s}/s"
            print(f"{client.name}\tweight {client.weight}\t{rate}\tbacklog caps {caps}")
            for key in clients.keys_of(client.name):
                state = f"revoked {key['revoked_at']:%Y-%m-%d %H:%M}" if key.get("revoked_at") else "active"
                print(f"\t{key['prefix']}…\tcreated {key['created_at']:%Y-%m-%d %H:%M}\t{state}")
    elif args.command == "revoke":
        print(f"revoked {args.prefix}… of client {clients.revoke(args.prefix)}")
    elif args.callback_secret:
        print(f"callback secret of {args.name}: {clients.rotate_callback_secret(args.name)}")
    else:
        print(f"new API key of {args.name} (shown once; its other keys are revoked): {clients.rotate(args.name)}")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    config = Config.from_env()
    store = open_store(config)
    clients = ClientStore(store.collection.database, store.cipher)
    try:
        run(clients, args)
    except ClientError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
