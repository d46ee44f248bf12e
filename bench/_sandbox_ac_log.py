"""``espbridge sandbox`` with a longer ActiveCampaign request log, for bench/sync_activecampaign.py.

The sandbox keeps the last 10,000 requests (``connector.sandbox.activecampaign.REQUEST_LOG_SIZE``); a
10,000-contact sync through contact/sync sends ~17,000, and the bench counts every one (and every 429) from that
log. This sets the module's constant, then runs the real CLI with the remaining arguments:

    python bench/_sandbox_ac_log.py 100000 sandbox --host 127.0.0.1 --port P --time-scale 20 …
"""

from __future__ import annotations

import sys

from connector.sandbox import activecampaign


def main() -> None:
    activecampaign.REQUEST_LOG_SIZE = int(sys.argv[1])
    from web.cli import main as cli

    cli(sys.argv[2:], prog_name="espbridge")


if __name__ == "__main__":
    main()
