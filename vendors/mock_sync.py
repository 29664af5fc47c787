"""A mock synchronous vendor: POST /fetch answers 200 with the data.

Run it with `python -m vendors.mock_sync --port 6001 --rate-limit 600/minute`; see --help.
"""

from __future__ import annotations

import argparse

import falcon

from vendors.mock_common import (
    MockSettings, MockVendor, build_parser, create_base_app, parse_settings, read_fetch_request, serve, vendor_record,
)

DEFAULT_PORT = 6001


class SyncFetch:
    """POST /fetch."""

    def __init__(self, vendor: MockVendor) -> None:
        self._vendor = vendor

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_fetch_request(req)
        self._vendor.admit()
        resp.media = vendor_record(body)
        self._vendor.stats.incr("served")


def create_app(settings: MockSettings | None = None) -> falcon.App:
    """Wire the sync mock's routes."""
    vendor = MockVendor(settings or MockSettings(port=DEFAULT_PORT))
    app = create_base_app(vendor)
    app.add_route("/fetch", SyncFetch(vendor))
    return app


def cli_parser() -> argparse.ArgumentParser:
    """Build the sync mock's command line."""
    return build_parser("vendors.mock_sync", "MOCK_SYNC", DEFAULT_PORT, "Mock synchronous vendor.")


def main(argv: list[str] | None = None) -> None:
    """Serve the sync mock with settings from flags and the environment."""
    serve(create_app, parse_settings(cli_parser(), MockSettings, argv))


if __name__ == "__main__":
    main()
