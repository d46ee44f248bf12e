"""Admin API: bearer tokens (hashed at rest), roles on every endpoint, reads scoped to the user's store."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from connector.store import AdminUser, Database
from connector.tenancy import NewStore, digest
from tests.conftest import post_messages, project_all, track


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def ann(client: FlaskClient, db: Database, store: NewStore) -> int:
    """A projected contact with identities, consent, an order, an open cart and a waitlist entry."""
    response = post_messages(
        client,
        store.write_key,
        [
            {"type": "page", "anonymousId": "anon-1", "messageId": "p1", "name": "Home"},
            {
                "type": "identify",
                "userId": "u1",
                "anonymousId": "anon-1",
                "messageId": "i1",
                "traits": {"email": "Ann@Example.com", "first_name": "Ann", "vip": True},
            },
            track("Consent Updated", "c1", channel="email", status="subscribed", method="form"),
            track(
                "Order Completed", "o1", order_id="A-1", products=[{"product_id": "p1", "price": 19.99, "quantity": 3}]
            ),
            track("Product Added", "a1", product_id="p2", price="5.00", quantity=2),
            track("Waitlist Joined", "w1", product_id="p9", variant_id="v1"),
        ],
    )
    assert response.status_code == 200, response.json
    project_all(db, store.id)
    found = client.get("/admin/api/contacts?user_id=u1", headers=bearer(_token(db, store)))
    return int(found.json["contacts"][0]["id"])


def _token(db: Database, store: NewStore) -> str:
    from connector.tenancy import create_admin_user

    with db.writer() as session:
        return create_admin_user(session, store.id, "fixture-admin@example.com", "admin").token


def test_contact_detail_shows_everything_known(client: FlaskClient, admin_token: Callable[..., str], ann: int) -> None:
    response = client.get(f"/admin/api/contacts/{ann}", headers=bearer(admin_token("viewer")))
    assert response.status_code == 200
    body = response.json
    assert body["email"] == "ann@example.com" and body["first_name"] == "Ann" and body["user_id"] == "u1"
    assert body["properties"] == {"vip": True}
    assert {"kind": "anonymous_id", "value": "anon-1"} in body["identities"]
    assert {"kind": "email", "value": "ann@example.com"} in body["identities"]
    assert body["consent"]["email"]["status"] == "subscribed"
    assert body["orders"] == {"count": 1, "total": "59.97"}
    assert body["events"]["count"] == 6
    assert body["cart"]["items"] == [{"product_id": "p2", "variant": "", "name": None, "price": "5.00", "quantity": 2}]
    assert [(w["product_id"], w["status"]) for w in body["waitlist"]] == [("p9", "waiting")]


def test_search_by_email_is_case_insensitive(client: FlaskClient, admin_token: Callable[..., str], ann: int) -> None:
    response = client.get("/admin/api/contacts?email=ANN@example.com", headers=bearer(admin_token("marketer")))
    assert [c["id"] for c in response.json["contacts"]] == [ann]


@pytest.mark.parametrize("query", ["", "?email=a@b.c&user_id=u1", "?email=not-an-email"])
def test_search_needs_exactly_one_valid_key(client: FlaskClient, admin_token: Callable[..., str], query: str) -> None:
    response = client.get(f"/admin/api/contacts{query}", headers=bearer(admin_token()))
    assert response.status_code == 400
    assert response.json["success"] is False and response.json["field"] in {"query", "email"}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer "}],
)
@pytest.mark.parametrize("path", ["/admin/api/contacts?user_id=u1", "/admin/api/contacts/1", "/admin/api/stats"])
def test_missing_or_wrong_token_is_401(
    client: FlaskClient, store: NewStore, headers: dict[str, str], path: str
) -> None:
    response = client.get(path, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_write_key_is_not_an_admin_token(client: FlaskClient, store: NewStore) -> None:
    assert client.get("/admin/api/stats", headers=bearer(store.write_key)).status_code == 401


@pytest.mark.parametrize(("role", "status"), [("admin", 200), ("marketer", 200), ("viewer", 200), ("compliance", 403)])
def test_stats_checks_the_role(client: FlaskClient, admin_token: Callable[..., str], role: str, status: int) -> None:
    response = client.get("/admin/api/stats", headers=bearer(admin_token(role)))
    assert response.status_code == status
    if status == 403:
        assert "compliance" in response.json["error"]


def test_another_stores_contact_is_404(
    client: FlaskClient, admin_token: Callable[..., str], other_store: NewStore, ann: int
) -> None:
    # Given an admin of another store
    token = admin_token("admin", store_id=other_store.id)
    # Then the contact of the first store does not exist for them, by id or by search
    assert client.get(f"/admin/api/contacts/{ann}", headers=bearer(token)).status_code == 404
    assert client.get("/admin/api/contacts?user_id=u1", headers=bearer(token)).json == {"contacts": []}
    stats = client.get("/admin/api/stats", headers=bearer(token)).json
    assert stats["contacts"] == 0 and stats["events"] == 0


def test_unknown_contact_is_404(client: FlaskClient, admin_token: Callable[..., str]) -> None:
    response = client.get("/admin/api/contacts/999999", headers=bearer(admin_token()))
    assert response.status_code == 404 and response.json["success"] is False


def test_tokens_are_stored_hashed(db: Database, admin_token: Callable[..., str]) -> None:
    token = admin_token("admin")
    with db.reader() as session:
        stored = session.scalars(sa.select(AdminUser.token_hash)).all()
    assert token not in stored
    assert digest(token) in stored


def test_stats_count_the_store(client: FlaskClient, admin_token: Callable[..., str], ann: int) -> None:
    stats = client.get("/admin/api/stats", headers=bearer(admin_token())).json
    assert stats["contacts"] == 1 and stats["orders"] == 1 and stats["events"] == 6
    assert stats["events_unprojected"] == 0
    assert stats["consent_state"] == {"email:subscribed": 1}
    assert stats["outbox"]["pending"] > 0
