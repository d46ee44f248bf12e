"""Segments over the admin API (CRUD, roles, precise 400s, evaluate, counts, streamed CSV) and the CLI."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from flask.testing import FlaskClient

from connector.store.commerce import Order
from connector.store.contacts import Contact
from connector.store.db import Database
from connector.store.segments import SegmentChange
from connector.tenancy import NewStore
from web.cli import main

URL = "/admin/api/segments"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _people(db: Database, store_id: int, n: int) -> list[int]:
    with db.writer() as s:
        contacts = [Contact(store_id=store_id, email=f"c{i}@example.com", external_id=f"cus_{i}") for i in range(n)]
        s.add_all(contacts)
        s.flush()
        for i, c in enumerate(contacts[: n // 2]):
            s.add(
                Order(
                    store_id=store_id,
                    order_id=f"o{i}",
                    contact_id=c.id,
                    total_cents=1000,
                    refunded_cents=0,
                    placed_at=dt.datetime.now(dt.UTC),
                )
            )
        return [c.id for c in contacts]


def test_crud_evaluate_counts_and_csv(
    client: FlaskClient, db: Database, store: NewStore, admin_token: Callable[..., str]
) -> None:
    headers = auth(admin_token("marketer"))
    ids = _people(db, store.id, 10)
    created = client.post(URL, json={"name": "Buyers", "criteria": {"orders.count": {"gte": 1}}}, headers=headers)
    assert created.status_code == 201, created.json
    seg = created.json
    # Evaluated at creation: the baseline, members but no entered changes.
    assert seg["marketing"] is True and seg["member_count"] == 5 and seg["evaluated_at"] is not None
    assert [s["name"] for s in client.get(URL, headers=headers).json["segments"]] == ["Buyers"]
    with db.reader() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(SegmentChange)) == 0

    evaluated = client.post(f"{URL}/{seg['id']}/evaluate", headers=headers)
    assert evaluated.json == {"segment_id": seg["id"], "members": 5, "entered": 0, "exited": 0}
    assert client.get(f"{URL}/{seg['id']}", headers=headers).json["member_count"] == 5
    counts = client.get(f"{URL}/{seg['id']}/counts", headers=headers).json["counts"]
    assert counts == [{"day": dt.datetime.now(dt.UTC).date().isoformat(), "members": 5}]

    response = client.get(f"{URL}/{seg['id']}/members.csv", headers=headers)
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert response.is_streamed
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [int(r["contact_id"]) for r in rows] == ids[:5]
    assert rows[0]["external_id"] == "cus_0" and rows[0]["email"] == "c0@example.com"

    updated = client.put(f"{URL}/{seg['id']}", json={"criteria": {"orders.count": 0}}, headers=headers)
    assert updated.status_code == 200 and updated.json["criteria"] == {"orders.count": 0}
    # Evaluated at once under the new criteria: the five buyers left, the five others joined.
    assert updated.json["member_count"] == 5
    with db.reader() as s:
        changes = s.execute(sa.select(SegmentChange.change, sa.func.count()).group_by(SegmentChange.change)).all()
        assert dict(changes) == {"entered": 5, "exited": 5}
    assert client.post(f"{URL}/{seg['id']}/evaluate", headers=headers).json == {
        "segment_id": seg["id"],
        "members": 5,
        "entered": 0,
        "exited": 0,
    }
    before = client.get(f"{URL}/{seg['id']}", headers=headers).json["evaluated_at"]
    renamed = client.put(f"{URL}/{seg['id']}", json={"name": "Browsers"}, headers=headers)
    assert renamed.json["name"] == "Browsers" and renamed.json["evaluated_at"] == before  # a new name: no evaluation

    assert client.delete(f"{URL}/{seg['id']}", headers=headers).status_code == 204
    assert client.get(f"{URL}/{seg['id']}", headers=headers).status_code == 404
    assert client.get(f"{URL}/{seg['id']}/members.csv", headers=headers).status_code == 404


@pytest.mark.parametrize(
    ("body", "field", "error"),
    [
        ({"criteria": {"orders.count": 1}}, "name", "name: is required"),
        ({"name": "X"}, "criteria", "criteria: is required"),
        (
            {"name": "X", "criteria": {"all": [{"orders.count": {"gte": "many"}}]}},
            "criteria.all[0].orders.count.gte",
            "criteria.all[0].orders.count.gte: expected a number, got str",
        ),
        ({"name": "X", "criteria": []}, "criteria", "criteria: expected an object, got list"),
        (
            {"name": "X", "criteria": {"shoe_size": 42}},
            "criteria.shoe_size",
            "criteria.shoe_size: unknown field 'shoe_size'",
        ),
        (
            {"name": "X", "criteria": {"orders.count": 1}, "colour": "red"},
            "colour",
            "colour: unknown field (editable: name, description, criteria, marketing)",
        ),
        ({"name": "", "criteria": {"orders.count": 1}}, "name", "name: expected a string of 1 to 200 characters"),
        (
            {"name": "X", "criteria": {"orders.count": 1}, "marketing": "no"},
            "marketing",
            "marketing: expected true or false",
        ),
    ],
)
def test_invalid_bodies_are_400_naming_the_field(
    client: FlaskClient, admin_token: Callable[..., str], body: dict[str, object], field: str, error: str
) -> None:
    response = client.post(URL, json=body, headers=auth(admin_token("admin")))
    assert response.status_code == 400
    assert response.json == {"success": False, "error": error, "field": field}


def test_duplicate_name_and_roles_and_store_scoping(
    client: FlaskClient, db: Database, store: NewStore, other_store: NewStore, admin_token: Callable[..., str]
) -> None:
    admin = auth(admin_token("admin"))
    body = {"name": "VIPs", "criteria": {"rfm.group": "VIP"}}
    seg = client.post(URL, json=body, headers=admin).json
    duplicate = client.post(URL, json=body, headers=admin)
    assert duplicate.status_code == 400 and duplicate.json["field"] == "name"
    viewer = auth(admin_token("viewer"))
    assert client.get(URL, headers=viewer).status_code == 403
    assert client.post(URL, json={"name": "Y", "criteria": {"rfm.group": "VIP"}}, headers=viewer).status_code == 403
    assert client.get(URL).status_code == 401
    other = auth(admin_token("admin", other_store.id))
    assert client.get(f"{URL}/{seg['id']}", headers=other).status_code == 404
    assert client.delete(f"{URL}/{seg['id']}", headers=other).status_code == 404
    assert client.get(URL, headers=other).json["segments"] == []


def test_cli(monkeypatch: pytest.MonkeyPatch, database_url: str, db: Database, store: NewStore, tmp_path: Path) -> None:
    monkeypatch.setenv("ESPBRIDGE_DATABASE_URL", database_url)
    cli = CliRunner()

    def run(*args: str, ok: bool = True) -> str:
        result = cli.invoke(main, ["segments", *args], catch_exceptions=False)
        assert (result.exit_code == 0) is ok, result.output
        return result.output

    _people(db, store.id, 4)
    created = json.loads(run("create", "Buyers", "--criteria", '{"orders.count": {"gte": 1}}', "--json"))
    assert "criteria.orders.count.gte: expected a number" in run(
        "create", "Bad", "--criteria", '{"orders.count": {"gte": "x"}}', ok=False
    )
    assert "installed VIP, Loyal" in run("install-prebuilt")
    assert "already exist" in run("install-prebuilt")
    listed = json.loads(run("list", "--json"))["segments"]
    assert len(listed) == 9
    assert all(s["evaluated_at"] for s in listed)  # installed with their baselines: kept up to date from now on
    everything = json.loads(run("evaluate", "--all", "--json"))
    assert len(everything["segments"]) == 9
    one = json.loads(run("evaluate", str(created["id"]), "--json"))["segments"]
    assert one == [{"segment_id": created["id"], "members": 2, "entered": 0, "exited": 0}]
    assert "give a SEGMENT_ID or --all" in run("evaluate", ok=False)
    assert "members 2" in run("show", str(created["id"]))
    out = tmp_path / "buyers.csv"
    assert "wrote 2 members" in run("export", str(created["id"]), "--output", str(out))
    assert len(list(csv.DictReader(io.StringIO(out.read_text())))) == 2
    assert "deleted" in run("delete", str(created["id"]))
    assert "does not exist" in run("show", str(created["id"]), ok=False)
