"""The examples in examples/ run as documented against a running ``espbridge serve``."""

from __future__ import annotations

import subprocess
import sys

import sqlalchemy as sa

from connector.store import Contact, Database, Event, Order, WaitlistEntry
from connector.tenancy import NewStore
from tests.conftest import unprojected

from .processes import REPO_ROOT, ServiceProcess, wait_until


def test_the_segment_storefront_example_lands_a_customer_with_order_consent_and_waitlist(
    serve: ServiceProcess, store: NewStore, db: Database
) -> None:
    example = REPO_ROOT / "examples" / "segment_storefront.py"
    argv = [sys.executable, str(example), "--write-key", store.write_key, "--host", serve.url, "--user-id", "ex-1"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "sent a storefront session for ex-1" in done.stdout

    def projected() -> bool:
        with db.reader() as session:
            stored = session.scalar(sa.select(sa.func.count(Event.id)).where(Event.store_id == store.id))
        return stored == 6 and unprojected(db, store.id) == 0

    wait_until(projected, timeout=30, what="the example's six events projected")
    with db.reader() as session:
        contact = session.scalars(sa.select(Contact).where(Contact.store_id == store.id)).one()
        assert (contact.external_id, contact.email) == ("ex-1", "ex-1@example.com")
        assert session.scalars(sa.select(Order.order_id).where(Order.contact_id == contact.id)).all() == ["o-ex-1"]
        waitlist = session.scalars(sa.select(WaitlistEntry).where(WaitlistEntry.contact_id == contact.id)).one()
        assert waitlist.product_id == "hoodie-2"
        errors = session.scalars(sa.select(Event.projection_error).where(Event.projection_error.is_not(None))).all()
        assert errors == []
