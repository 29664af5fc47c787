"""Clients and their API keys in MongoDB.

A key is `vf_` and a random secret. Only its SHA-256 digest is stored (as the key record's
`_id`, so a lookup is a read by id), with its first characters kept to tell keys apart on
screen; the key itself is shown once, when it is made. A client's name is its id: jobs carry it.
A client's callback signing secret is stored encrypted with the payloads' cipher (ENCRYPTION_KEY).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import pymongo
import pymongo.database
import pymongo.errors
from cryptography.fernet import MultiFernet
from pymongo.collection import Collection

from service.store import PUBLIC_CLIENT, utcnow

KEY_PREFIX = "vf_"
#: How much of a key is kept to show it: the prefix and the secret's first characters.
SHOWN_CHARACTERS = len(KEY_PREFIX) + 8
DEFAULT_RATE_PER_S = 50
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


class ClientError(Exception):
    """A client or key that does not exist, or a setting that is not valid."""


@dataclass(frozen=True)
class Client:
    """Who submits jobs: their share of vendors' quota, their request rate and their per-vendor backlog caps."""

    name: str
    weight: int = 1
    rate_per_s: int | None = DEFAULT_RATE_PER_S  # None: no request limit
    backlog_caps: dict[str, int] = field(default_factory=dict)
    callback_secret: str | None = field(default=None, repr=False)  # None: the service's CALLBACK_SECRET signs

    @classmethod
    def from_document(cls, document: dict[str, Any], cipher: MultiFernet) -> Client:
        return cls(
            document["_id"], document.get("weight", 1), document.get("rate_per_s", DEFAULT_RATE_PER_S),
            dict(document.get("backlog_caps") or {}), unsealed(cipher, document.get("callback_secret")),
        )

    def backlog_cap(self, vendor_name: str) -> int | None:
        """Return how many of this client's jobs may wait for the vendor, or None for no cap of its own."""
        return self.backlog_caps.get(vendor_name)


def unsealed(cipher: MultiFernet, secret: str | None) -> str | None:
    """Return a callback secret as stored, decrypted (None stays None)."""
    return None if secret is None else cipher.decrypt(secret.encode()).decode()


def digest(key: str) -> str:
    """Return the SHA-256 digest a key is stored as."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_callback_secret() -> str:
    """Return a Standard Webhooks signing secret."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def check_settings(name: str, weight: int, rate_per_s: int | None, backlog_caps: dict[str, int]) -> None:
    """Raise ClientError for a name or setting no client may have."""
    if not NAME_PATTERN.match(name):
        raise ClientError(f"a client's name is 1 to 63 lowercase letters, digits, '_', '.' or '-', not {name!r}")
    if weight < 1 or (rate_per_s is not None and rate_per_s < 1) or any(cap < 1 for cap in backlog_caps.values()):
        raise ClientError("weight, rate and backlog caps are whole numbers of at least 1")


class ClientStore:
    """Read and change clients and their keys."""

    def __init__(self, database: pymongo.database.Database, cipher: MultiFernet) -> None:
        self.clients: Collection = database["clients"]
        self.keys: Collection = database["api_keys"]
        self.cipher = cipher

    def migrate(self) -> None:
        """Create the key index and the `public` client (idempotent).

        `public` stands for every caller without a key under AUTH=open, so it has no request limit of its own.
        """
        self.keys.create_index([("client", 1)], name="client")
        public = Client(PUBLIC_CLIENT, rate_per_s=None)
        self.clients.update_one({"_id": PUBLIC_CLIENT}, {"$setOnInsert": self._document(public)}, upsert=True)

    def add(
        self, name: str, *, weight: int = 1, rate_per_s: int | None = DEFAULT_RATE_PER_S,
        backlog_caps: dict[str, int] | None = None,
    ) -> tuple[Client, str]:
        """Create a client with a key and a callback secret of its own; return it and the key, shown only now."""
        client = Client(name, weight, rate_per_s, backlog_caps or {}, new_callback_secret())
        check_settings(name, weight, rate_per_s, client.backlog_caps)
        try:
            self.clients.insert_one(self._document(client))
        except pymongo.errors.DuplicateKeyError:
            raise ClientError(f"a client called {name!r} exists already; `rotate` gives it a new key") from None
        return client, self.issue_key(name)

    def get(self, name: str) -> Client:
        document = self.clients.find_one({"_id": name})
        if document is None:
            raise ClientError(f"no client is called {name!r}")
        return Client.from_document(document, self.cipher)

    def callback_secret(self, name: str | None) -> str | None:
        """Return the client's own callback signing secret, or None where it has none (the service's then signs)."""
        document = self.clients.find_one({"_id": name or PUBLIC_CLIENT}, {"callback_secret": True})
        return unsealed(self.cipher, (document or {}).get("callback_secret"))

    def all(self) -> list[Client]:
        return [Client.from_document(document, self.cipher) for document in self.clients.find().sort("_id", 1)]

    def by_key(self, key: str) -> Client | None:
        """Return the client a key that is not revoked belongs to, or None."""
        record = self.keys.find_one({"_id": digest(key)})
        if record is None or record.get("revoked_at") is not None:
            return None
        document = self.clients.find_one({"_id": record["client"]})
        return None if document is None else Client.from_document(document, self.cipher)

    def keys_of(self, name: str) -> list[dict[str, Any]]:
        """Return a client's keys, newest first: their shown prefix, creation and revocation, never a digest."""
        found = self.keys.find({"client": name}, {"_id": False, "prefix": True, "created_at": True, "revoked_at": True})
        return sorted(found, key=lambda key: key["created_at"], reverse=True)

    def issue_key(self, name: str) -> str:
        """Make a new key for the client and return it; only its digest and prefix are kept."""
        key = new_key()
        self.keys.insert_one({"_id": digest(key), "prefix": key[:SHOWN_CHARACTERS], "client": name, "created_at": utcnow()})
        return key

    def rotate(self, name: str) -> str:
        """Give the client a new key and revoke all its others; return the new key."""
        self.get(name)
        key = self.issue_key(name)
        self.keys.update_many({"client": name, "_id": {"$ne": digest(key)}, "revoked_at": None}, {"$set": {"revoked_at": utcnow()}})
        return key

    def revoke(self, prefix: str) -> str:
        """Revoke the key shown as `prefix`; return its client's name."""
        found = list(self.keys.find({"prefix": prefix, "revoked_at": None}).limit(2))
        if len(found) != 1:
            raise ClientError(f"{'no' if not found else 'more than one'} active key is shown as {prefix!r}")
        self.keys.update_one({"_id": found[0]["_id"]}, {"$set": {"revoked_at": utcnow()}})
        return found[0]["client"]

    def rotate_callback_secret(self, name: str) -> str:
        """Give the client a new callback signing secret and return it."""
        secret = new_callback_secret()
        if self.clients.update_one({"_id": name}, {"$set": {"callback_secret": self._sealed(secret)}}).matched_count != 1:
            raise ClientError(f"no client is called {name!r}")
        return secret

    def _document(self, client: Client) -> dict[str, Any]:
        secret = None if client.callback_secret is None else self._sealed(client.callback_secret)
        return {
            "_id": client.name, "weight": client.weight, "rate_per_s": client.rate_per_s,
            "backlog_caps": client.backlog_caps, "callback_secret": secret, "created_at": utcnow(),
        }

    def _sealed(self, secret: str) -> str:
        return self.cipher.encrypt(secret.encode()).decode()
