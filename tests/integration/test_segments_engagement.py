"""Engagement, orders and consent reach segments (and a mirrored segment's ESP lists) incrementally, end to end,
through the runtime's own relay and outbox jobs. A signed Klaviyo webhook reporting an open moves the contact into
an "opened in the last 7 days" segment, and nothing about it is sent to either ESP (they reported it); an order and
an unsubscribe move a mirrored segment's list and tag with exactly one add and one remove. Both sandboxes are
served over HTTP and connected to the store."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from connector.credentials import CredentialCipher, new_key
from connector.engagement import SEGMENT_KINDS
from connector.esp import connections
from connector.outbox import Topic
from connector.runtime import Runtime
from connector.sandbox import ActiveCampaignSandbox, KlaviyoSandbox, SandboxServer
from connector.sandbox.activecampaign import DEFAULT_ACTID, DEFAULT_API_TOKEN, DEFAULT_EVENT_KEY
from connector.sandbox.klaviyo import DEFAULT_API_KEY
from connector.segments import service as segment_service
from connector.segments.criteria import OTHER_FIELDS
from connector.settings import Settings
from connector.store import Database, Engagement, Identity, OutboxRow, OutboxStatus, SyncItem, SyncItemStatus
from connector.tenancy import NewStore
from tests.conftest import post_messages, track
from tests.integration.test_klaviyo_webhooks import SECRET, delivery, klaviyo_event, post
from tests.integration.test_segments_incremental import LATENCY_BUDGET, _member, _segment, _wait

ANN, BO = "ann@example.com", "bo@example.com"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        secret_key="test-secret",
        credentials_key=new_key(),
        relay_interval=0.05,
        retry_min_backoff=0.05,
    )


@pytest.fixture
def esps(db: Database, settings: Settings, store: NewStore) -> Iterator[tuple[KlaviyoSandbox, ActiveCampaignSandbox]]:
    """Both sandboxes served on 127.0.0.1 and connected to ``store`` (Klaviyo with a webhook secret)."""
    klaviyo, ac = KlaviyoSandbox(), ActiveCampaignSandbox(time_scale=100)
    with ac._lock:  # the account's list, made as the account's owner would
        email_list = ac._next_id("list")
        ac.lists[email_list] = {"id": email_list, "name": "Newsletter", "stringid": "newsletter", "channel": "email"}
    servers = [SandboxServer(klaviyo, port=0), SandboxServer(ac, port=0)]
    threads = [threading.Thread(target=server.serve_forever, daemon=True) for server in servers]
    for thread in threads:
        thread.start()
    cipher = CredentialCipher(settings.credentials_key)
    with db.writer() as session:
        connections.connect(
            session,
            cipher,
            store.id,
            "klaviyo",
            api_key=DEFAULT_API_KEY,
            base_url=servers[0].url,
            webhook_secret=SECRET,
        )
        connections.connect(
            session,
            cipher,
            store.id,
            "activecampaign",
            api_key=DEFAULT_API_TOKEN,
            base_url=servers[1].url,
            settings={
                "list_id": int(email_list),
                "actid": int(DEFAULT_ACTID),
                "track_url": f"{servers[1].url}/event",
                "rate_limit_scale": 100,
            },
            secrets={"event_key": DEFAULT_EVENT_KEY},
        )
    yield klaviyo, ac
    for server, thread in zip(servers, threads, strict=True):
        server.shutdown()
        thread.join(10)


def _settled(db: Database, store_id: int) -> bool:
    """Every outbox row delivered and every sync item settled."""
    with db.reader() as s:
        busy_rows = s.scalar(
            sa.select(sa.func.count())
            .select_from(OutboxRow)
            .where(OutboxRow.store_id == store_id, OutboxRow.status.in_([OutboxStatus.PENDING, OutboxStatus.ENQUEUED]))
        )
        busy_items = s.scalar(
            sa.select(sa.func.count())
            .select_from(SyncItem)
            .where(
                SyncItem.store_id == store_id,
                SyncItem.status.in_([SyncItemStatus.PENDING, SyncItemStatus.ENQUEUED]),
            )
        )
        return busy_rows == 0 and busy_items == 0


def _known(db: Database, store_id: int, email: str) -> bool:
    with db.reader() as s:
        found = s.scalar(sa.select(Identity.id).where(Identity.store_id == store_id, Identity.value == email))
        return found is not None


def _engagement_rows(db: Database, store_id: int) -> list[OutboxRow]:
    with db.reader() as s:
        return list(
            s.scalars(
                sa.select(OutboxRow)
                .where(OutboxRow.store_id == store_id, OutboxRow.topic == Topic.ENGAGEMENT_RECORDED)
                .order_by(OutboxRow.id)
            )
        )


def _sync_item_ids(db: Database, store_id: int) -> set[int]:
    with db.reader() as s:
        return set(s.scalars(sa.select(SyncItem.id).where(SyncItem.store_id == store_id)))


def _requests(esps: tuple[KlaviyoSandbox, ActiveCampaignSandbox]) -> list[list[dict[str, Any]]]:
    return [list(sandbox.requests) for sandbox in esps]


def test_an_open_reported_by_webhook_moves_the_contact_into_an_opened_segment_and_sends_nothing_back(
    runtime: Runtime,
    client: FlaskClient,
    db: Database,
    store: NewStore,
    esps: tuple[KlaviyoSandbox, ActiveCampaignSandbox],
) -> None:
    opened = _segment(db, store.id, "Opened in last 7 days", {"engagement.opened_within_days": 7})
    runtime.start_background()
    identify = [
        {"type": "identify", "messageId": "i1", "userId": "u-ann", "traits": {"email": ANN}},
        {"type": "identify", "messageId": "i2", "userId": "u-bo", "traits": {"email": "bo-old@example.com"}},
    ]
    assert post_messages(client, store.write_key, identify).status_code == 200
    # Projected, and the profiles sent to both ESPs.
    _wait(lambda: all(sandbox.requests for sandbox in esps) and _settled(db, store.id), LATENCY_BUDGET)
    assert not _member(db, opened, "u-ann")
    before_requests, before_items = _requests(esps), _sync_item_ids(db, store.id)

    # Three opens of one contact in one delivery, and an open of someone espbridge does not know yet.
    ann_opens = [klaviyo_event(email_address=ANN, **{"$message": f"MSG{n}"}) for n in range(3)]
    bo_open = klaviyo_event(profile_id="01KPUNKNOWNBO00000000000000", email_address=BO)
    raw = delivery(*[("opened_email", event) for event in [*ann_opens, bo_open]])
    response = post(client, store.id, raw)
    assert response.status_code == 200, response.json
    assert (response.json["recorded"], response.json["unknown_people"]) == (4, 1)
    _wait(lambda: _member(db, opened, "u-ann"), LATENCY_BUDGET)
    (row,) = _engagement_rows(db, store.id)  # the opens coalesce: one row for the contact
    _wait(lambda: _settled(db, store.id), LATENCY_BUDGET)
    assert not _member(db, opened, "u-bo")
    # Nothing went back to either ESP: no sync item was made and neither sandbox received a request.
    assert _sync_item_ids(db, store.id) == before_items
    assert _requests(esps) == before_requests

    # Bo becomes known by that email; the same event reported again attaches it to him, and he enters too.
    bo_email = {"type": "identify", "messageId": "i3", "userId": "u-bo", "traits": {"email": BO}}
    assert post_messages(client, store.write_key, [bo_email]).status_code == 200
    _wait(lambda: _known(db, store.id, BO) and _settled(db, store.id), LATENCY_BUDGET)
    before_requests, before_items = _requests(esps), _sync_item_ids(db, store.id)
    again = post(client, store.id, delivery(("opened_email", bo_open)))
    assert (again.json["duplicates"], again.json["linked"]) == (1, 1)
    _wait(lambda: _member(db, opened, "u-bo"), LATENCY_BUDGET)

    _wait(lambda: _settled(db, store.id), LATENCY_BUDGET)
    rows = _engagement_rows(db, store.id)
    assert len(rows) == 2 and rows[0].id == row.id
    assert all(r.status == OutboxStatus.DONE and r.last_error is None for r in rows)
    with db.reader() as s:
        ann, bo = (
            s.scalar(sa.select(Engagement.contact_id).where(Engagement.esp_event_id == event["id"]))
            for event in (ann_opens[0], bo_open)
        )
    assert [r.subject_id for r in rows] == [str(ann), str(bo)]
    assert _sync_item_ids(db, store.id) == before_items
    assert _requests(esps) == before_requests


def test_the_engagement_kinds_that_move_segments_are_the_ones_criteria_read() -> None:
    # A new ``engagement.<kind>_within_days`` field must also make that kind re-evaluate segments on arrival.
    fields = [name for name in OTHER_FIELDS if name.startswith("engagement.")]
    assert {name.removeprefix("engagement.").removesuffix("_within_days") for name in fields} == set(SEGMENT_KINDS)


def test_an_order_and_an_unsubscribe_move_a_mirrored_segments_lists_with_exactly_one_add_and_one_remove(
    runtime: Runtime,
    client: FlaskClient,
    db: Database,
    store: NewStore,
    esps: tuple[KlaviyoSandbox, ActiveCampaignSandbox],
) -> None:
    klaviyo, ac = esps
    buyers = _segment(db, store.id, "Buyers", {"orders.count": {"gte": 1}})
    for esp in ("klaviyo", "activecampaign"):
        assert segment_service.set_mirror(db, store.id, buyers, esp, {})["queued"] == 0  # nobody in it yet
    runtime.start_background()
    identify = {"type": "identify", "messageId": "i1", "userId": "u-ann", "traits": {"email": ANN}}
    assert post_messages(client, store.write_key, [identify]).status_code == 200
    _wait(lambda: _known(db, store.id, ANN) and _settled(db, store.id), LATENCY_BUDGET)
    marks = [len(sandbox.requests) for sandbox in esps]

    def on_klaviyo_list() -> list[str]:
        state = klaviyo.state()
        emails = {p["id"]: p["attributes"].get("email") for p in state["profiles"]}
        return sorted(emails[m] for lst in state["lists"].values() for m in lst["members"])

    order = track("Order Completed", "o1", "u-ann", order_id="A-1", total=59.97, products=[{"product_id": "p1"}])
    assert post_messages(client, store.write_key, [order]).status_code == 200
    _wait(lambda: on_klaviyo_list() == [ANN] and _settled(db, store.id), LATENCY_BUDGET)
    unsubscribe = track("Consent Updated", "c1", "u-ann", channel="email", status="unsubscribed", method="link")
    assert post_messages(client, store.write_key, [unsubscribe]).status_code == 200
    _wait(lambda: on_klaviyo_list() == [] and _settled(db, store.id), LATENCY_BUDGET)

    # Exactly the calls the two changes need: the list made once, one add, one remove; one tag added and removed.
    list_ops = {"create_list", "add_profiles_to_list", "remove_profiles_from_list"}
    assert [e["operation"] for e in list(klaviyo.requests)[marks[0] :] if e["operation"] in list_ops] == [
        "create_list",
        "add_profiles_to_list",
        "remove_profiles_from_list",
    ]
    tag_ops = [
        e["operation"]
        for e in list(ac.requests)[marks[1] :]
        if e["operation"] in {"add_contact_tag", "remove_contact_tag"}
    ]
    assert tag_ops == ["add_contact_tag", "remove_contact_tag"]
    assert not ac.contact_tags
