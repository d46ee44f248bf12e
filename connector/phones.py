"""E.164 phone numbers: what an SMS subscription needs (Klaviyo and ActiveCampaign text only such numbers)."""

from __future__ import annotations

import re

_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
#: Separators people type inside a number; they carry no digits, so dropping them changes nothing.
_SEPARATORS = re.compile(r"[\s\-().]")


def e164(value: object) -> str | None:
    """``value`` as an E.164 number (``+`` and 2-15 digits, separators dropped), or None when it is not one."""
    if not isinstance(value, str):
        return None
    compact = _SEPARATORS.sub("", value)
    return compact if _E164.fullmatch(compact) else None
