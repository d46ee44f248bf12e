"""Checking the options of a segment's mirror to one ESP (``Segment.mirror[esp]``) before it is stored.

Klaviyo mirrors to a list: ``list_id`` (an existing list) or, without it, ``espbridge: <name>`` created on first
use. ActiveCampaign mirrors as the connection's ``segment_mirror`` says: ``tags`` (``tag``, the name after the
``espbridge: `` prefix, default the segment's name) or ``lists`` (``list_id``, default a list created per segment).
A target is never the connection's consent list (removing leavers from it would touch who is subscribed) nor one
another segment of the store already mirrors to (their adds and removes would undo each other).
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from connector.errors import InvalidInput
from connector.store import EspConnection
from connector.store.segments import Segment

#: The options each ESP's mirror takes (ActiveCampaign: one of them, by the connection's segment_mirror).
OPTIONS = {"klaviyo": ("list_id",), "activecampaign": ("tag", "list_id")}
#: Klaviyo list ids are short alphanumeric ids; the id goes into a URL path, so nothing else is let through.
_KLAVIYO_LIST = re.compile(r"[A-Za-z0-9_-]{1,64}")
TAG_MAX = 200


def checked_esp(esp: str) -> None:
    if esp not in OPTIONS:
        raise InvalidInput("esp", f"unknown ESP {esp!r} (one of {', '.join(sorted(OPTIONS))})")


def checked_mirror(session: Session, segment: Segment, esp: str, options: Any) -> dict[str, str]:
    """``options`` as they are to be stored in ``segment.mirror[esp]``, or InvalidInput naming the field."""
    checked_esp(esp)
    connection = session.scalar(
        sa.select(EspConnection).where(EspConnection.store_id == segment.store_id, EspConnection.esp == esp)
    )
    if connection is None:
        raise InvalidInput("esp", f"this store is not connected to {esp} (espbridge esp connect {esp})")
    if not isinstance(options, dict):
        raise InvalidInput("body", "expected a JSON object of mirror options (may be empty)")
    current = (segment.mirror or {}).get(esp)
    if not options and current is not None:
        return dict(current)  # {} on a mirror already on keeps it (and the list the adapter created)
    allowed = OPTIONS[esp]
    if esp == "activecampaign":
        mode = str(connection.settings.get("segment_mirror") or "tags")
        allowed = ("tag",) if mode == "tags" else ("list_id",)
        wrong = sorted(set(options) & (set(OPTIONS[esp]) - set(allowed)))
        if wrong:
            reason = f"this connection mirrors segments as {mode} (segment_mirror): give {allowed[0]}"
            raise InvalidInput(wrong[0], reason)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InvalidInput(unknown[0], f"unknown option for {esp} (options: {', '.join(allowed)})")
    entry: dict[str, str] = {}
    if "list_id" in options:
        entry["list_id"] = _list_id(esp, options["list_id"])
        consent_lists = {str(connection.settings.get(key)) for key in ("list_id", "sms_list_id")}
        if entry["list_id"] in consent_lists:
            raise InvalidInput("list_id", f"is the {esp} connection's consent list: a segment needs a list of its own")
    if "tag" in options:
        tag = options["tag"]
        if not isinstance(tag, str) or not 1 <= len(tag.strip()) <= TAG_MAX:
            raise InvalidInput("tag", f"expected a string of 1 to {TAG_MAX} characters")
        entry["tag"] = tag.strip()
    _unshared(session, segment, esp, entry)
    return entry


def _list_id(esp: str, value: Any) -> str:
    if esp == "klaviyo":
        if not isinstance(value, str) or not _KLAVIYO_LIST.fullmatch(value):
            raise InvalidInput("list_id", "expected a Klaviyo list id (letters and digits)")
        return value
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).isdigit() or int(value) <= 0:
        raise InvalidInput("list_id", "expected an ActiveCampaign list id (a positive whole number)")
    return str(int(value))


def _unshared(session: Session, segment: Segment, esp: str, entry: dict[str, str]) -> None:
    """No other segment of the store may mirror to the same list or tag of this ESP. ActiveCampaign's tag (or, in
    lists mode without a ``list_id``, the list it creates) is named ``tag`` or else the segment's name."""
    others = session.execute(
        sa.select(Segment.id, Segment.name, Segment.mirror).where(
            Segment.store_id == segment.store_id, Segment.id != segment.id
        )
    )
    named = esp == "activecampaign" and "list_id" not in entry
    mine = (entry.get("tag") or segment.name).lower()
    for other_id, name, mirror in others:
        theirs = (mirror or {}).get(esp)
        if theirs is None:
            continue
        if "list_id" in entry and str(theirs.get("list_id")) == entry["list_id"]:
            raise InvalidInput("list_id", f"segment {other_id} ({name}) already mirrors to this list")
        if named and "list_id" not in theirs and str(theirs.get("tag") or name).lower() == mine:
            field = "tag" if "tag" in entry else "esp"
            raise InvalidInput(field, f"segment {other_id} ({name}) already mirrors to the tag or list {mine!r}")
