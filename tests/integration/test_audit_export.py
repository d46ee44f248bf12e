"""Compliance exports and the audit commands: per person (email, phone, id, merged contacts included), per date
range and channel, with the verification and anchor in the header, through the connector, the CLI and the admin
API (compliance role only)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from flask.testing import FlaskClient

from connector import audit
from connector.errors import InvalidInput, NotFound
from connector.store import ConsentEvidence, Contact, Database
from connector.tenancy import NewStore
from tests.integration import test_audit
from tests.integration.test_audit import Tamper, new_contact, record
from web.cli import main

People = dict[str, int]
tamper = test_audit.tamper  # the fixture: triggers lifted on this test's database


@pytest.fixture
def people(db: Database, store: NewStore, other_store: NewStore) -> People:
    """Ann (email + phone, with an older contact merged into her), Bob, and someone in another store.

    Ledger (seq: who, day, channel): 1 ann d0 email (with IP), 2 bob d1 email, 3 ann d2 sms, 4 old-ann d3 email,
    5 ann d5 email.
    """
    ann = new_contact(db, store.id, "ann@example.com", "+4915112345678")
    bob = new_contact(db, store.id, "bob@example.com", "+4915199999999")
    old_ann = new_contact(db, store.id, "ann.old@example.com")
    record(db, store.id, ann, 0, ip="203.0.113.9")
    record(db, store.id, bob, 1)
    record(db, store.id, ann, 2, channel="sms")
    record(db, store.id, old_ann, 3, status="unsubscribed")
    record(db, store.id, ann, 5)
    with db.writer() as session:
        merged = session.get(Contact, old_ann)
        assert merged is not None
        merged.merged_into_id, merged.email = ann, None
    stranger = new_contact(db, other_store.id, "ann@example.com")
    record(db, other_store.id, stranger, 0)
    return {"ann": ann, "bob": bob, "old_ann": old_ann}


def seqs(db: Database, store_id: int, **wanted: Any) -> list[int]:
    return [row["seq"] for row in audit.export(db, store_id, audit.ExportFilter(**wanted))]


def day(n: int) -> Any:
    return audit.parse_when("day", f"2026-03-{1 + n:02d}")


def test_export_finds_a_person_by_email_phone_or_id_with_merged_contacts(
    db: Database, store: NewStore, people: People
) -> None:
    assert seqs(db, store.id) == [1, 2, 3, 4, 5]
    assert seqs(db, store.id, email=" ANN@example.com ") == [1, 3, 4, 5]  # the merged contact's row too
    assert seqs(db, store.id, phone="+4915112345678") == [1, 3, 4, 5]
    assert seqs(db, store.id, phone="+49 151 1234 5678") == [1, 3, 4, 5]  # typed otherwise: E.164 as stored, as erasure
    assert seqs(db, store.id, contact_id=people["old_ann"]) == [1, 3, 4, 5]  # up to the survivor and back down
    assert seqs(db, store.id, contact_id=people["bob"]) == [2]


def test_export_filters_by_date_range_and_channel(db: Database, store: NewStore, people: People) -> None:
    assert seqs(db, store.id, since=day(1), until=day(3)) == [2, 3]  # until is exclusive
    assert seqs(
        db,
        store.id,
        since=audit.parse_when("since", "2026-03-02"),
        until=audit.parse_when("until", "2026-03-04", until=True),
    ) == [2, 3, 4]  # a day given as until is included whole
    assert seqs(db, store.id, channel="sms") == [3]
    assert seqs(db, store.id, email="ann@example.com", channel="email", since=day(3)) == [4, 5]


def test_export_shows_the_evidence_and_whether_it_still_matches(db: Database, store: NewStore, people: People) -> None:
    first, second = list(audit.export(db, store.id, audit.ExportFilter(contact_id=people["ann"])))[:2]
    assert (first["ip"], first["user_agent"], first["evidence"]) == ("203.0.113.9", "Firefox", "matches")
    assert (second["ip"], second["evidence"]) == (None, "none")
    with db.writer() as session:
        session.execute(sa.update(ConsentEvidence).values(ip="198.51.100.1"))
    assert next(audit.export(db, store.id, audit.ExportFilter()))["evidence"] == "mismatch"
    with db.writer() as session:
        session.execute(sa.delete(ConsentEvidence))  # what an erasure does
    row = next(audit.export(db, store.id, audit.ExportFilter()))
    assert (row["ip"], row["evidence"]) == (None, "erased")
    assert audit.verify(db, store.id).ok  # and the chain does not mind


@pytest.mark.parametrize(
    ("wanted", "field"),
    [
        ({"email": "ann@example.com", "phone": "+49"}, "phone"),
        ({"email": "not-an-email"}, "email"),
        ({"channel": "fax"}, "channel"),
        ({"since": "2026-03-05", "until": "2026-03-01"}, "until"),
    ],
)
def test_export_refuses_bad_filters_naming_the_field(
    db: Database, store: NewStore, people: People, wanted: dict[str, str], field: str
) -> None:
    given: dict[str, Any] = {k: audit.parse_when(k, v) if k in ("since", "until") else v for k, v in wanted.items()}
    with pytest.raises(InvalidInput) as caught:
        next(audit.export(db, store.id, audit.ExportFilter(**given)))
    assert caught.value.field == field


def test_export_of_an_unknown_person_is_not_found(db: Database, store: NewStore, people: People) -> None:
    with pytest.raises(NotFound, match="email"):
        next(audit.export(db, store.id, audit.ExportFilter(email="nobody@example.com")))
    with pytest.raises(NotFound, match="contact"):  # another store's contact is unknown here
        next(audit.export(db, store.id, audit.ExportFilter(contact_id=people["ann"] + 1000)))


# ------------------------------------------------------------------------------------------------------ CLI


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, database_url: str) -> CliRunner:
    monkeypatch.setenv("ESPBRIDGE_DATABASE_URL", database_url)
    return CliRunner()


def run(cli: CliRunner, *args: str, code: int = 0) -> Any:
    result = cli.invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result


def test_cli_anchor_and_verify(cli: CliRunner, db: Database, store: NewStore, people: People, tmp_path: Path) -> None:
    text = run(cli, "audit", "anchor", "--store", str(store.id)).stdout.strip()
    taken = audit.Anchor.parse(text)
    assert (taken.store_id, taken.seq) == (store.id, 5)
    assert "ledger intact: 5 rows" in run(cli, "audit", "verify", "--store", str(store.id)).stdout
    path = tmp_path / "anchor.json"
    path.write_text(text + "\n")
    result = json.loads(
        run(cli, "audit", "verify", "--store", str(store.id), "--anchor-file", str(path), "--json").stdout
    )
    assert (result["ok"], result["anchor_checked"], result["rows"]) == (True, True, 5)
    bad = run(cli, "audit", "verify", "--store", str(store.id), "--anchor", "{", code=1)
    assert "anchor: is not JSON" in bad.output


def test_cli_verify_exits_1_naming_the_first_bad_row(
    cli: CliRunner, db: Database, store: NewStore, people: People, tamper: Tamper
) -> None:
    target = next(audit.export(db, store.id, audit.ExportFilter(contact_id=people["bob"])))
    tamper.update(target["id"], status_after="unsubscribed")
    result = run(cli, "audit", "verify", "--store", str(store.id), code=1)
    assert f"ledger BROKEN at row id {target['id']} seq 2: edited" in result.stdout
    assert json.loads(run(cli, "audit", "verify", "--store", str(store.id), "--json", code=1).stdout)["problem"] == {
        "id": target["id"],
        "seq": 2,
        "kind": "edited",
        "detail": "content does not match its entry_hash",
    }


def test_cli_export_csv_to_a_file_with_header_and_progress(
    cli: CliRunner, db: Database, store: NewStore, people: People, tmp_path: Path
) -> None:
    out = tmp_path / "ann.csv"
    result = run(
        cli, "audit", "export", "--store", str(store.id), "--format", "csv", "--phone", "+4915112345678",
        "--since", "2026-03-02", "--output", str(out),
    )  # fmt: skip
    assert "exported 3 rows" in result.stderr
    lines = out.read_text().splitlines()
    assert lines[0].startswith("# verification: ") and lines[1].startswith("# anchor: ")
    verification, anchor = json.loads(lines[0][16:]), audit.Anchor.parse(lines[1][10:])
    assert (verification["ok"], verification["rows"], anchor.seq) == (True, 5, 5)
    assert json.loads(lines[2][10:])["phone"] == "+4915112345678"
    rows = list(csv.DictReader(io.StringIO("\n".join(lines[3:]))))
    assert [(r["seq"], r["channel"], r["occurred_at"]) for r in rows] == [
        ("3", "sms", "2026-03-03T10:00:00.000000Z"),
        ("4", "email", "2026-03-04T10:00:00.000000Z"),
        ("5", "email", "2026-03-06T10:00:00.000000Z"),
    ]


def test_cli_export_json_to_stdout_and_bad_options(cli: CliRunner, store: NewStore, people: People) -> None:
    stdout = run(cli, "audit", "export", "--store", str(store.id), "--format", "json", "--channel", "sms").stdout
    data = json.loads(stdout)
    assert list(data)[:2] == ["verification", "anchor"]
    assert [e["seq"] for e in data["entries"]] == [3]
    bad = run(cli, "audit", "export", "--store", str(store.id), "--format", "json", "--since", "soon", code=1)
    assert "since: must be a date" in bad.output


# ------------------------------------------------------------------------------------------------------ API


def get(client: FlaskClient, token: str, path: str, **params: str) -> Any:
    return client.get(f"/admin/api/audit{path}", query_string=params, headers={"Authorization": f"Bearer {token}"})


@pytest.mark.parametrize("role", ["admin", "marketer", "viewer"])
def test_other_roles_get_403_on_every_endpoint(
    client: FlaskClient, admin_token: Callable[..., str], people: People, role: str
) -> None:
    token = admin_token(role)
    for path, params in (("/verify", {}), ("/anchor", {}), ("/export", {"format": "csv"})):
        assert get(client, token, path, **params).status_code == 403
    assert client.get("/admin/api/audit/verify").status_code == 401


def test_api_verify_and_anchor(client: FlaskClient, admin_token: Callable[..., str], people: People) -> None:
    token = admin_token("compliance")
    taken = get(client, token, "/anchor").get_json()
    assert taken["seq"] == 5 and audit.Anchor.parse(taken["text"]).hash == taken["hash"]
    result = get(client, token, "/verify", anchor=taken["text"]).get_json()
    assert (result["ok"], result["anchor_checked"], result["rows"]) == (True, True, 5)
    bad = get(client, token, "/verify", anchor='{"store_id": 1}')
    assert (bad.status_code, bad.get_json()["field"]) == (400, "anchor")


def test_api_export_streams_json_and_csv(
    client: FlaskClient, admin_token: Callable[..., str], store: NewStore, people: People
) -> None:
    token = admin_token("compliance")
    response = get(client, token, "/export", format="json", email="ann@example.com", until="2026-03-04")
    assert response.is_streamed and response.mimetype == "application/json"
    data = response.get_json()
    assert list(data)[:3] == ["verification", "anchor", "filter"] and data["verification"]["ok"]
    assert [(e["seq"], e["contact_id"]) for e in data["entries"]] == [
        (1, people["ann"]),
        (3, people["ann"]),
        (4, people["old_ann"]),
    ]
    text = get(client, token, "/export", format="csv", contact=str(people["bob"])).get_data(as_text=True)
    body = [line for line in text.splitlines() if not line.startswith("# ")]
    assert [r["seq"] for r in csv.DictReader(io.StringIO("\n".join(body)))] == ["2"]


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({"format": "xml"}, 400, "format"),
        ({"format": "csv", "contact": "abc"}, 400, "contact"),
        ({"format": "csv", "since": "yesterday"}, 400, "since"),
        ({"format": "csv", "channel": "fax"}, 400, "channel"),
        ({"format": "json", "email": "ann@example.com", "phone": "+4915112345678"}, 400, "phone"),
        ({"format": "json", "email": "nobody@example.com"}, 404, None),
    ],
)
def test_api_export_bad_params_name_the_field(
    client: FlaskClient,
    admin_token: Callable[..., str],
    people: People,
    params: dict[str, str],
    status: int,
    field: str | None,
) -> None:
    response = get(client, admin_token("compliance"), "/export", **params)
    assert response.status_code == status
    assert response.get_json().get("field") == field
