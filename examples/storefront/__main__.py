"""``python -m examples.storefront`` (from the repository root): the storefront on http://127.0.0.1:5000.

Environment: ``ESPBRIDGE_WRITE_KEY`` (required: the store's write key), ``ESPBRIDGE_URL`` (default
http://127.0.0.1:8000), ``STOREFRONT_PORT`` (default 5000), ``STOREFRONT_SECRET_KEY`` (signs the session
cookie; random if unset), ``STOREFRONT_ADMIN_TOKEN`` (enables the inventory routes).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from espbridge import Client

from .app import create_app


def main() -> int:
    write_key = os.environ.get("ESPBRIDGE_WRITE_KEY")
    if not write_key:
        print("set ESPBRIDGE_WRITE_KEY to the store's write key (espbridge stores create prints it)", file=sys.stderr)
        return 2
    host = os.environ.get("ESPBRIDGE_URL", "http://127.0.0.1:8000")
    client = Client(write_key, host=host, on_error=_report)
    app = create_app(
        client,
        secret_key=os.environ.get("STOREFRONT_SECRET_KEY"),
        admin_token=os.environ.get("STOREFRONT_ADMIN_TOKEN"),
    )
    try:
        app.run(host="127.0.0.1", port=int(os.environ.get("STOREFRONT_PORT", "5000")))
    finally:
        client.shutdown()  # send what is still queued before the process ends
    return 0


def _report(error: Exception, *_: Any) -> None:
    print(f"espbridge did not take some events: {error}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
