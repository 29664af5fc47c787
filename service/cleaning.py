"""Clean vendor data: trim every string and drop PII keys, recording which keys went."""

from __future__ import annotations

import re
from typing import Any

# Vendor payloads echo the request_id; the job already carries it.
ENVELOPE_KEYS = frozenset({"request_id"})


def normalize_key(key: str) -> str:
    """Fold a key so `Card-Number`, `card_number` and `cardNumber` compare equal."""
    return re.sub(r"[^a-z0-9]", "", key.lower())


class Cleaner:
    """Apply the PII deny-list and string trimming to vendor data."""

    def __init__(self, pii_keys: tuple[str, ...] | list[str]) -> None:
        self.denied = frozenset(normalize_key(key) for key in pii_keys)

    def clean(self, data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Return the cleaned data and the dotted paths of the keys removed (never the values)."""
        removed: list[str] = []
        body = {key: value for key, value in data.items() if key not in ENVELOPE_KEYS}
        return self._clean_value(body, "", removed), removed

    def _clean_value(self, value: Any, path: str, removed: list[str]) -> Any:
        if isinstance(value, str):
            return value.strip()
        if isinstance(value, list):
            return [self._clean_value(item, f"{path}[]", removed) for item in value]
        if isinstance(value, dict):
            kept = {}
            for key, item in value.items():
                key_path = f"{path}.{key}" if path else str(key)
                if normalize_key(str(key)) in self.denied:
                    if key_path not in removed:
                        removed.append(key_path)
                    continue
                kept[key] = self._clean_value(item, key_path, removed)
            return kept
        return value
