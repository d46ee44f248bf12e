"""SMS consent is explicit, separate from email, and needs an E.164 phone: at projection, in the adapters and in
both sandboxes (which refuse an SMS subscribe without a phone, as Klaviyo and ActiveCampaign do)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from werkzeug.test import Client

from connector.credentials import new_key
from connector.esp.base import ConsentChange
from connector.esp.klaviyo import plan_consent
from connector.sandbox.activecampaign import ActiveCampaignSandbox
from connector.sandbox.klaviyo import KlaviyoSandbox
from connector.settings import Settings
from connector.store import ConsentLedgerEntry, Contact, Database, Event
from connector.tenancy import NewStore
from tests.conftest import post_messages, project_all, track
from tests.integration import consent_esps
from tests.integration.test_sandbox_activecampaign import Clock, H, bulk, post, set_status, sync
from tests.integration.test_sandbox_klaviyo import call
from tests.unit.test_activecampaign_adapter import adapter_for, make_list

EMAIL = "ada@example.com"
PHONE = "+447700900123"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(database_url=database_url, secret_key="test-secret", credentials_key=new_key())


@pytest.fixture
def esps(db: Database, settings: Settings, store: NewStore) -> Iterator[consent_esps.Esps]:
    with consent_esps.connected(db, settings, store.id) as connected:
        yield connected


def identify(message_id: str, **traits: str) -> dict[str, object]:
    return {"type": "identify", "userId": "u1", "messageId": message_id, "traits": {"email": EMAIL, **traits}}


def consent(message_id: str, channel: str, **extra: str) -> dict[str, object]:
    return track("Consent Updated", message_id, "u1", channel=channel, status="subscribed", **extra)


def test_an_email_grant_never_subscribes_sms_and_an_sms_grant_never_email(
    client: FlaskClient, store: NewStore, esps: consent_esps.Esps
) -> None:
    post_messages(client, store.write_key, [identify("i1", phone=PHONE), consent("c1", "email")])
    esps.drain(store.id)
    assert esps.klaviyo_consent(EMAIL) == {"email": "SUBSCRIBED"}
    assert (esps.ac_status(EMAIL, esps.email_list), esps.ac_status(EMAIL, esps.sms_list)) == ("1", None)

    other = "bo@example.com"
    post_messages(
        client,
        store.write_key,
        [
            {
                "type": "identify",
                "userId": "u2",
                "messageId": "i2",
                "traits": {"email": other, "phone": "+15555550123"},
            },
            track("Consent Updated", "c2", "u2", channel="sms", status="subscribed"),
        ],
    )
    esps.drain(store.id)
    assert esps.klaviyo_consent(other) == {"sms": "SUBSCRIBED"}
    assert (esps.ac_status(other, esps.email_list), esps.ac_status(other, esps.sms_list)) == (None, "1")


def test_an_sms_grant_without_an_e164_phone_is_refused_at_projection_and_records_nothing(
    client: FlaskClient, db: Database, store: NewStore, esps: consent_esps.Esps
) -> None:
    post_messages(
        client,
        store.write_key,
        [
            identify("i1"),
            consent("no-phone", "sms"),
            consent("bad-phone", "sms", phone="07700 900123"),
            identify("i2", phone="12345"),
            consent("bad-contact-phone", "sms"),
        ],
    )
    esps.drain(store.id)
    with db.reader() as session:
        errors = {m: e for m, e in session.execute(sa.select(Event.message_id, Event.projection_error))}
        assert session.scalar(sa.select(sa.func.count()).select_from(ConsentLedgerEntry)) == 0
    assert errors["no-phone"] == (
        "properties.phone: an SMS subscription needs an E.164 phone number; "
        "the contact has none and the event gives none"
    )
    assert errors["bad-phone"] == "properties.phone: not an E.164 phone number (+ and 2-15 digits)"
    assert errors["bad-contact-phone"] is not None and errors["bad-contact-phone"].startswith("properties.phone:")
    assert esps.klaviyo_consent(EMAIL) == {}
    assert esps.ac_status(EMAIL, esps.sms_list) is None


def test_the_phone_an_sms_grant_carries_is_normalised_kept_and_used(
    client: FlaskClient, db: Database, store: NewStore, esps: consent_esps.Esps
) -> None:
    post_messages(client, store.write_key, [identify("i1"), consent("c1", "sms", phone="+44 7700 900-123")])
    esps.drain(store.id)
    with db.reader() as session:
        assert session.scalar(sa.select(Contact.phone)) == PHONE
    [profile] = esps.klaviyo.state()["profiles"]
    assert profile["attributes"]["phone_number"] == PHONE
    assert esps.klaviyo_consent(EMAIL) == {"sms": "SUBSCRIBED"}
    assert esps.ac_status(EMAIL, esps.sms_list) == "1"
    ac_contact = esps.ac.contact_by_email(EMAIL)
    assert ac_contact is not None and ac_contact["phone"] == PHONE


def test_withdrawing_sms_needs_no_phone(client: FlaskClient, db: Database, store: NewStore) -> None:
    post_messages(
        client, store.write_key, [identify("i1"), track("Consent Updated", "w1", channel="sms", status="unsubscribed")]
    )
    project_all(db, store.id)
    with db.reader() as session:
        assert [e.action for e in session.scalars(sa.select(ConsentLedgerEntry))] == ["withdraw"]


def test_the_klaviyo_sandbox_refuses_an_sms_subscribe_without_a_phone() -> None:
    client = Client(KlaviyoSandbox())
    profile = {
        "type": "profile",
        "attributes": {"email": EMAIL, "subscriptions": {"sms": {"marketing": {"consent": "SUBSCRIBED"}}}},
    }
    body = {
        "data": {
            "type": "profile-subscription-bulk-create-job",
            "attributes": {"profiles": {"data": [profile]}},
        }
    }
    refused = call(client, "bulk_subscribe_profiles", body)
    assert refused.status_code == 400
    [error] = refused.json["errors"]
    assert error["source"]["pointer"] == "/data/attributes/profiles/data/0/attributes/phone_number"
    assert "phone number" in error["detail"]

    profile["attributes"]["phone_number"] = PHONE
    assert call(client, "bulk_subscribe_profiles", body).status_code == 202


def test_the_activecampaign_sandbox_refuses_an_sms_list_member_without_a_phone() -> None:
    client = Client(ActiveCampaignSandbox(clock=Clock(step=1.0)))  # a new 1 s window per request: no 429
    body = {
        "list": {
            "name": "Texts",
            "stringid": "texts",
            "sender_url": "https://x.test",
            "sender_reminder": "r",
            "channel": "sms",
        }
    }
    sms_list = str(post(client, "/api/3/lists", body).json["list"]["id"])
    contact = sync(client, EMAIL)["id"]
    refused = set_status(client, contact, sms_list, 1)
    assert refused.status_code == 422
    [error] = refused.json["errors"]
    assert error["source"]["pointer"] == "/contactList/contact" and "phone" in error["detail"]
    assert set_status(client, contact, sms_list, 2).status_code == 200  # unsubscribing needs no phone

    sync(client, EMAIL, phone=PHONE)
    assert set_status(client, contact, sms_list, 1).status_code == 200

    # The bulk importer fails such a contact too (and imports one with a phone)
    batch = bulk(
        client,
        [
            {"email": "no@x.test", "subscribe": [{"listid": sms_list}]},
            {"email": "yes@x.test", "phone": PHONE, "subscribe": [{"listid": sms_list}]},
        ],
    )
    info = client.get(f"/api/3/import/info?batchId={batch.json['batchId']}", headers=H).json
    assert info["failure"] == ["no@x.test"] and len(info["success"]) == 1


def test_the_adapters_never_send_an_sms_subscribe_without_an_e164_phone() -> None:
    now = dt.datetime.now(dt.UTC)
    for phone in (None, "", "07700 900123"):
        person = Contact(store_id=1, email=EMAIL, phone=phone, properties={})
        assert plan_consent(person, "sms", "subscribed", occurred_at=now).action == "none"

        sandbox = ActiveCampaignSandbox(time_scale=consent_esps.SCALE)
        adapter = adapter_for(sandbox, sms_list_id=make_list(sandbox, "Texts"))
        outcome = adapter.set_consent([ConsentChange(person, "sms", "subscribed", now, "grant")])
        assert "E.164" in outcome.skipped[0]
        assert not [r for r in sandbox.requests if r["operation"] == "update_list_status"]
