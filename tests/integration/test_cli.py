"""The espbridge CLI: every command listed, JSON output where it prints data, clear usage errors."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from connector.store import AdminUser, Database, Store
from connector.tenancy import digest
from web.cli import main


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, database_url: str) -> CliRunner:
    monkeypatch.setenv("ESPBRIDGE_DATABASE_URL", database_url)
    return CliRunner()


def run(cli: CliRunner, *args: str, ok: bool = True) -> str:
    result = cli.invoke(main, list(args), catch_exceptions=False)
    assert (result.exit_code == 0) is ok, result.output
    return result.output


def test_help_lists_every_command() -> None:
    output = CliRunner().invoke(main, ["--help"]).output
    for command in ("migrate", "stores", "users", "serve", "worker", "sandbox", "esp", "demo"):
        assert f"  {command} " in output


def test_migrate_reports_the_head_revision(cli: CliRunner) -> None:
    assert json.loads(run(cli, "migrate", "--json"))["revision"] == "0008"


def test_stores_create_prints_id_and_write_key_once(cli: CliRunner, db: Database) -> None:
    data = json.loads(run(cli, "stores", "create", "Shop", "--timezone", "Europe/Paris", "--json"))
    assert data["name"] == "Shop" and data["timezone"] == "Europe/Paris"
    assert data["write_key"].startswith("wk_")
    with db.reader() as session:
        store = session.get(Store, data["id"])
        assert store is not None and store.timezone == "Europe/Paris"
    listed = json.loads(run(cli, "stores", "list", "--json"))["stores"]
    assert listed == [{"id": data["id"], "name": "Shop", "timezone": "Europe/Paris", "double_opt_in": []}]


def test_stores_create_refuses_an_unknown_timezone(cli: CliRunner) -> None:
    result = cli.invoke(main, ["stores", "create", "Shop", "--timezone", "Mars/Olympus"])
    assert result.exit_code == 2
    assert "unknown IANA time zone" in result.output


def test_users_create_prints_a_token_stored_only_hashed(cli: CliRunner, db: Database) -> None:
    store_id = json.loads(run(cli, "stores", "create", "Shop", "--json"))["id"]
    data = json.loads(run(cli, "users", "create", "Eve@Example.com", "--role", "compliance", "--json"))
    assert data == {**data, "store_id": store_id, "email": "eve@example.com", "role": "compliance"}
    with db.reader() as session:
        user = session.scalar(sa.select(AdminUser))
        assert user is not None and user.token_hash == digest(data["token"])


def test_users_create_needs_a_store_when_there_are_several(cli: CliRunner) -> None:
    run(cli, "stores", "create", "A")
    run(cli, "stores", "create", "B")
    result = cli.invoke(main, ["users", "create", "a@example.com", "--role", "admin"])
    assert result.exit_code == 2 and "say which" in result.output
    assert cli.invoke(main, ["users", "create", "a@example.com", "--role", "owner"]).exit_code == 2


def test_plain_output_is_readable(cli: CliRunner) -> None:
    output = run(cli, "stores", "create", "Shop")
    assert "store 1 'Shop' (UTC)" in output and "write key: wk_" in output
