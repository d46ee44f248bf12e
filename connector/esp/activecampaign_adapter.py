"""ActiveCampaign behind the sync engine's ``EspAdapter`` protocol: ``ActiveCampaignClient`` calls, per-record outcomes.

What goes where:

- profiles: ``contact/sync`` per contact (incremental), or the bulk importer for large batches and full syncs
  (≤ 250 contacts and ≤ 400,000 bytes a request, awaited through ``import/info``), with full syncs' consents
  inside the same import as ``subscribe`` / ``unsubscribe`` lists, so a full sync costs one request per 250
  contacts. AC's import never re-subscribes someone who unsubscribed, which is also our rule. With the setting
  ``full_sync_method = "contact_sync"`` bulk upserts go one ``contact/sync`` (+ ``contactLists``) per contact.
  Custom fields (``field_map``: our property → AC field title) are looked up by title once, created (``text``,
  tied to every list) when missing, and cached per adapter.
- consent: list status on ``list_id`` (email) / ``sms_list_id`` (sms): 1 subscribe, 2 unsubscribe. AC's v3 API has
  no per-contact suppression, so bounces and complaints unsubscribe. Before subscribing, the contact's current
  status is read: if AC has them unsubscribed at or after our grant, they are NOT re-subscribed (skipped with the
  reason; not an error); if our grant is newer, they are re-subscribed with ``sourceid`` 4. Unsubscribes go first.
- events: "Order Completed" becomes a Deep Data order (connection and customer found or created once and cached;
  integer cents; ``source`` 0 for backfills, else 1; ``externalcheckoutid`` from the order's checkout/cart id, so
  an abandoned cart sent earlier converts). A duplicate order is done (a retry). Every other event goes to
  trackcmp: the name shortened to 32 characters deterministically and registered once, ``eventdata`` a compact
  bounded JSON of the scalar properties. trackcmp takes no unique id, so an event whose acknowledgement was lost
  (a timeout after AC stored it) arrives twice when the engine retries it: AC offers no dedupe key. Within one
  call an event (by messageId) is sent at most once.
- carts: an abandoned cart is an order with ``externalcheckoutid`` and ``abandonedDate`` (AC's own abandoned-cart
  automations run on those); sending the same cart again updates it.
- erase: the contact found by email and deleted (not found: already gone).

A record AC refuses (a 422 on its request, a bulk 400 naming it, a failure in the import's results, trackcmp's
``success: 0``, any other 4xx on a one-record request) is rejected and the rest go on; a rate limit, an
authentication failure or a transient failure stops the call and fails what is left (the engine retries).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from .. import phones
from ..commerce import OrderProperties
from ..store import Channel, ConsentStatus, Contact
from .activecampaign import MAX_EVENT_NAME, AcContact, ActiveCampaignClient, is_duplicate
from .base import AbandonedCart, ConsentChange, MembershipChange, Outcome, SegmentRef, TrackedEvent
from .batches import MAX_REJECTION_ROUNDS as MAX_REJECTION_ROUNDS
from .batches import mark_failed, send_resilient
from .errors import Accepted, EspError, Permanent, Rejected, Transient

#: Contact columns a ``field_map`` key may name (anything else is a contact property).
CONTACT_COLUMNS = ("external_id", "timezone", "locale")
ORDER_EVENT = "Order Completed"
#: Upper bound of trackcmp's ``eventdata`` (AC documents none; kept small).
MAX_EVENTDATA = 1000
MAX_EVENTDATA_STRING = 200
DEFAULT_CURRENCY = "USD"
SERVICE = "espbridge"
LINK_URL = "https://github.com/espbridge/espbridge"
LOGO_URL = "https://github.com/espbridge.png"
TAG_PREFIX = "espbridge: "
#: Why ``mirror_segment`` skips a contact ActiveCampaign does not have yet.
NOT_IN_AC_YET = "not in ActiveCampaign yet"
UNSUBSCRIBED_LATER = "unsubscribed at ActiveCampaign after our grant"


class ActiveCampaignAdapter:
    """Parameters:
    client: the HTTP client (its limiter is the account's shared rate limiter).
    list_id / sms_list_id: the lists email and sms subscriptions go to (None: that channel's consent is skipped).
    field_map: our contact property (or ``external_id`` / ``timezone`` / ``locale``) → AC custom field title.
    segment_mirror: ``"tags"`` or ``"lists"`` (``mirror_segment``).
    full_sync_method: ``"bulk_import"`` or ``"contact_sync"`` (how bulk upserts go).
    ecom_connection: the Deep Data connection's name shown in AC.
    job_timeout / poll_interval: how long to wait for an import batch, and how often to look.
    pause: called with (operation, seconds) on a 429 (the shared limiter pauses the whole account).
    """

    esp = "activecampaign"

    def __init__(
        self,
        client: ActiveCampaignClient,
        *,
        list_id: str | None = None,
        sms_list_id: str | None = None,
        field_map: Mapping[str, str] | None = None,
        segment_mirror: str = "tags",
        full_sync_method: str = "bulk_import",
        ecom_connection: str = "espbridge",
        job_timeout: float = 600.0,
        poll_interval: float = 1.0,
        pause: Callable[[str, float], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.list_id = list_id
        self.sms_list_id = sms_list_id
        self.field_map = dict(field_map or {})
        self.segment_mirror = segment_mirror
        self.full_sync_method = full_sync_method
        self.ecom_connection = ecom_connection
        self.job_timeout = job_timeout
        self.poll_interval = poll_interval
        self._pause = pause
        self._sleep = sleep
        # caches (per adapter: one store connection, one thread)
        self._contact_ids: dict[str, str] = {}
        self._fields: dict[str, str] | None = None
        self._unrelated_fields: set[str] = set()
        self._tracking_enabled = False
        self._event_names: set[str] | None = None
        self._connection_id: str | None = None
        self._customers: dict[str, str] = {}
        self._carts: dict[str, str] = {}
        self._tags: dict[str, str] = {}
        self._lists: dict[str, str] = {}

    def close(self) -> None:
        self.client.close()

    # mapping

    def _mapped(self, contact: Contact) -> dict[str, Any] | None:
        if not contact.email:
            return None
        props = contact.properties or {}
        fields: dict[str, str] = {}
        for source, title in sorted(self.field_map.items()):
            if source in CONTACT_COLUMNS:
                value = getattr(contact, source)
            else:
                value = props.get(source.removeprefix("properties."))
            text = field_value(value)
            if text is not None and title:
                fields[title] = text
        return {
            "email": contact.email,
            "first_name": contact.first_name,
            "last_name": contact.last_name,
            "phone": contact.phone,
            "fields": fields,
        }

    def fingerprint(self, contact: Contact, consents: dict[str, str]) -> str | None:
        mapped = self._mapped(contact)
        if mapped is None:
            return None  # AC identifies contacts by email only
        document = json.dumps([mapped, sorted(consents.items())], sort_keys=True, default=str)
        return hashlib.sha256(document.encode()).hexdigest()

    def _ac_contact(
        self, mapped: Mapping[str, Any], subscribe: Iterable[str] = (), unsubscribe: Iterable[str] = ()
    ) -> AcContact:
        ids = self._field_ids(mapped["fields"])
        return AcContact(
            email=mapped["email"],
            first_name=mapped["first_name"],
            last_name=mapped["last_name"],
            phone=mapped["phone"],
            fields={ids[title]: value for title, value in mapped["fields"].items()},
            subscribe=tuple(subscribe),
            unsubscribe=tuple(unsubscribe),
        )

    def _field_ids(self, titles: Iterable[str]) -> dict[str, str]:
        """Custom field ids by title: read once (GET /fields), created when missing (POST /fields + a fieldRel to
        every list, relid 0), cached."""
        wanted = set(titles)
        if not wanted and not self._unrelated_fields:
            return {}
        if self._fields is None and wanted:
            self._fields = self.client.fields()
        fields = self._fields if self._fields is not None else {}
        lowered = {title.lower(): fid for title, fid in fields.items()}
        for title in sorted(wanted):
            if title not in fields and title.lower() in lowered:
                fields[title] = lowered[title.lower()]
            if title not in fields:
                fields[title] = self.client.create_field(title)
                self._unrelated_fields.add(fields[title])
        for fid in sorted(self._unrelated_fields):
            self.client.create_field_rel(fid, 0)
            self._unrelated_fields.discard(fid)
        return {title: fields[title] for title in wanted}

    # profiles

    def upsert_profiles(
        self, contacts: Sequence[Contact], *, bulk: bool, consents: Sequence[ConsentChange] = ()
    ) -> Outcome:
        start = self.client.requests
        outcome = Outcome()
        mapped: dict[int, dict[str, Any]] = {}
        for index, contact in enumerate(contacts):
            found = self._mapped(contact)
            if found is None:
                outcome.skipped[index] = "no email (ActiveCampaign identifies contacts by email)"
            else:
                mapped[index] = found
        by_contact: dict[int, list[ConsentChange]] = {}
        for change in consents:
            by_contact.setdefault(change.contact.id, []).append(change)
        try:
            self._field_ids({title for m in mapped.values() for title in m["fields"]})
        except EspError as error:
            self._failed(outcome, list(mapped), error)
        else:
            if bulk and self.full_sync_method == "bulk_import":
                self._bulk_profiles(contacts, mapped, by_contact, outcome)
            else:
                self._sync_profiles(contacts, mapped, by_contact, outcome)
        outcome.requests = self.client.requests - start
        return outcome

    def _sync_profiles(
        self,
        contacts: Sequence[Contact],
        mapped: dict[int, dict[str, Any]],
        consents: Mapping[int, list[ConsentChange]],
        outcome: Outcome,
    ) -> None:
        indexes = list(mapped)
        for position, index in enumerate(indexes):
            try:
                contact_id = self.client.sync_contact(self._ac_contact(mapped[index]))
                self._contact_ids[mapped[index]["email"].lower()] = contact_id
                for change in consents.get(contacts[index].id, ()):
                    self._apply_consent(change, contact_id)
            except (Rejected, Permanent) as error:
                outcome.rejected[index] = error.message
            except EspError as error:
                self._failed(outcome, indexes[position:], error)
                return
            else:
                outcome.remote_ids[index] = contact_id

    def _bulk_profiles(
        self,
        contacts: Sequence[Contact],
        mapped: dict[int, dict[str, Any]],
        consents: Mapping[int, list[ConsentChange]],
        outcome: Outcome,
    ) -> None:
        items: dict[int, AcContact] = {}
        for index, values in mapped.items():
            subscribe: list[str] = []
            unsubscribe: list[str] = []
            for change in consents.get(contacts[index].id, ()):
                plan = self._plan(change)
                if isinstance(plan, tuple):
                    (subscribe if plan[1] == 1 else unsubscribe).append(plan[0])
            items[index] = self._ac_contact(values, subscribe, unsubscribe)

        def send(chunk: list[int]) -> list[Accepted]:
            return self.client.bulk_import([items[i] for i in chunk])

        for accepted, chunk in send_resilient(list(items), send, outcome, pause=self._pause):
            if accepted.job_id is None:
                continue
            try:
                self._await_batch(accepted.job_id, chunk, items, outcome)
            except EspError as error:
                self._failed(outcome, chunk, error)

    def _await_batch(self, batch_id: str, chunk: list[int], items: Mapping[int, AcContact], outcome: Outcome) -> None:
        deadline = time.monotonic() + self.job_timeout
        while True:
            info = self.client.import_info(batch_id)
            if info.finished:
                break
            if time.monotonic() >= deadline:
                raise Transient(f"import batch {batch_id} still {info.status} after {self.job_timeout:.0f} s")
            self._sleep(self.poll_interval)
        by_email = {items[i].email.lower(): i for i in chunk}
        failed = {by_email[e.lower()] for e in info.failure if e.lower() in by_email}
        for index in failed:
            outcome.rejected[index] = "ActiveCampaign's import refused the contact (import/info failure)"
        imported = [i for i in chunk if i not in failed]
        # import/info lists the imported contacts' ids without their emails: taken as ids (in request order) only
        # when every imported contact has exactly one.
        if len(info.success) == len(imported):
            for index, contact_id in zip(imported, info.success, strict=True):
                outcome.remote_ids[index] = contact_id

    # consent

    def _plan(self, change: ConsentChange) -> tuple[str, int] | str:
        """(list id, status 1|2), or why nothing is sent."""
        if not change.contact.email:
            return "no email (ActiveCampaign identifies contacts by email)"
        if change.channel == Channel.EMAIL:
            list_id = self.list_id
        elif change.channel == Channel.SMS:
            list_id = self.sms_list_id
        else:
            return f"ActiveCampaign has no {change.channel} consent"
        if list_id is None:
            return f"no {'list_id' if change.channel == Channel.EMAIL else 'sms_list_id'} setting for {change.channel}"
        if change.channel == Channel.EMAIL and change.action in ("bounce", "complaint"):
            return (list_id, 2)  # AC v3 has no per-contact suppression: unsubscribe from the list
        if change.status == ConsentStatus.SUBSCRIBED:
            if change.channel == Channel.SMS and phones.e164(change.contact.phone) is None:
                return "no E.164 phone number (ActiveCampaign texts only such numbers)"
            return (list_id, 1)
        if change.status == ConsentStatus.UNSUBSCRIBED:
            return (list_id, 2)
        return f"nothing to send for {change.channel} {change.status}"

    def set_consent(self, changes: Sequence[ConsentChange]) -> Outcome:
        start = self.client.requests
        outcome = Outcome()
        plans: dict[int, tuple[str, int]] = {}
        for index, change in enumerate(changes):
            plan = self._plan(change)
            if isinstance(plan, str):
                outcome.skipped[index] = plan
            else:
                plans[index] = plan
        # Withdrawals first: if the account's budget runs out mid-way, the unsubscribes are the ones that went.
        planned = sorted(plans, key=lambda i: plans[i][1] != 2)
        for position, index in enumerate(planned):
            try:
                skipped = self._apply_consent(changes[index])
            except (Rejected, Permanent) as error:
                outcome.rejected[index] = error.message
            except EspError as error:
                self._failed(outcome, planned[position:], error)
                break
            else:
                if skipped:
                    outcome.skipped[index] = skipped
        outcome.requests = self.client.requests - start
        return outcome

    def _apply_consent(self, change: ConsentChange, contact_id: str | None = None) -> str | None:
        """Set one consent; returns why it was skipped (None: done)."""
        plan = self._plan(change)
        if isinstance(plan, str):
            return plan
        list_id, status = plan
        phone = phones.e164(change.contact.phone) if change.channel == Channel.SMS and status == 1 else None
        if phone is not None:  # AC refuses an SMS list member without a phone: make sure the contact has ours
            contact_id = self.client.sync_contact(AcContact(email=change.contact.email or "", phone=phone))
            self._contact_ids[(change.contact.email or "").lower()] = contact_id
        elif contact_id is None:
            contact_id = self._contact_id(change.contact, create=True)
        assert contact_id is not None
        sourceid: int | None = None
        if status == 1:
            current = next((m for m in self.client.contact_lists(contact_id) if m.list_id == list_id), None)
            if current is not None and current.status == "1":
                return None  # already subscribed: nothing to change
            if current is not None and current.status in ("2", "3"):
                ours = _aware(change.occurred_at)
                theirs = current.unsubscribed_at
                if theirs is None or theirs >= ours:
                    return UNSUBSCRIBED_LATER if current.status == "2" else "bounced at ActiveCampaign after our grant"
                sourceid = 4  # AC's flag for re-subscribing someone who unsubscribed
        self.client.set_list_status(contact_id, list_id, status, sourceid=sourceid)
        return None

    def _contact_id(self, contact: Contact, *, create: bool) -> str | None:
        email = (contact.email or "").lower()
        if email in self._contact_ids:
            return self._contact_ids[email]
        found = self.client.find_contact(contact.email or "")
        if found is None and create:
            found = self.client.sync_contact(AcContact(email=contact.email or ""))
        if found is not None:
            self._contact_ids[email] = found
        return found

    # events

    def send_events(self, events: Sequence[TrackedEvent], *, backfill: bool = False) -> Outcome:
        start = self.client.requests
        outcome = Outcome()
        acknowledged: set[str] = set()
        retried = False
        pending = list(range(len(events)))
        for position, index in enumerate(pending):
            tracked = events[index]
            email = tracked.contact.email
            if not email:
                outcome.skipped[index] = "no email (ActiveCampaign identifies contacts by email)"
                continue
            if tracked.event.message_id in acknowledged:
                continue  # the same event twice in one call: sent once
            name = tracked.event.name or tracked.event.type
            try:
                if name == ORDER_EVENT:
                    reason = self._send_order(tracked, backfill=backfill)
                else:
                    reason = self._track(tracked, email)
            except (Rejected, Permanent) as error:
                if name != ORDER_EVENT and isinstance(error, Rejected) and not retried:
                    # trackcmp refuses events of unregistered names or a disabled account: look again, once
                    retried = True
                    self._tracking_enabled, self._event_names = False, None
                    try:
                        reason = self._track(tracked, email)
                    except (Rejected, Permanent) as again:
                        outcome.rejected[index] = again.message
                        continue
                    except EspError as again:
                        self._failed(outcome, [i for i in pending[position:] if i not in outcome.skipped], again)
                        break
                else:
                    outcome.rejected[index] = error.message
                    continue
            except EspError as error:
                self._failed(outcome, [i for i in pending[position:] if i not in outcome.skipped], error)
                break
            if reason:
                outcome.skipped[index] = reason
            else:
                acknowledged.add(tracked.event.message_id)
        outcome.requests = self.client.requests - start
        return outcome

    def _track(self, tracked: TrackedEvent, email: str) -> str | None:
        if not self.client.can_track:
            return "event tracking is not configured (actid setting and event key)"
        name = event_name(tracked.event.name or tracked.event.type)
        if not self._tracking_enabled:
            if not self.client.event_tracking_enabled():
                self.client.enable_event_tracking()
            self._tracking_enabled = True
        if self._event_names is None:
            self._event_names = self.client.event_names()
        if name not in self._event_names:
            self.client.create_event_name(name)
            self._event_names.add(name)
        properties = tracked.event.payload.get("properties") or {}
        self.client.track_event(name, email, event_data(properties, tracked.event.message_id))
        return None

    def _send_order(self, tracked: TrackedEvent, *, backfill: bool) -> str | None:
        try:
            props = OrderProperties.model_validate(tracked.event.payload.get("properties") or {})
        except ValidationError as exc:
            raise Rejected(f"not an order ActiveCampaign can take: {exc.errors()[0]['msg']}", records=[]) from None
        contact = tracked.contact
        email = contact.email or ""
        connection_id = self._connection(contact.store_id)
        customer_id = self._customer(connection_id, email)
        lines = [
            _order_product(line.product_id, line.name, line.price, line.quantity, line.sku, line.category)
            for line in props.products
        ]
        lines_total = sum((line.price or 0) * line.quantity for line in props.products)
        total = next((v for v in (props.total, props.revenue, props.subtotal) if v is not None), lines_total)
        order: dict[str, Any] = {
            "externalid": props.order_id,
            "source": 0 if backfill else 1,
            "email": email,
            "orderProducts": lines,
            "totalPrice": total,
            "currency": (props.currency or DEFAULT_CURRENCY).upper(),
            "connectionid": _num(connection_id),
            "customerid": _num(customer_id),
            "externalCreatedDate": _iso(tracked.event.timestamp),
            "orderNumber": props.order_id,
        }
        checkout = props.checkout_id or props.cart_id
        if checkout:
            order["externalcheckoutid"] = checkout  # converts the abandoned cart sent under this id
        for key, value in (
            ("discountAmount", props.discount),
            ("shippingAmount", props.shipping),
            ("taxAmount", props.tax),
        ):
            if value is not None:
                order[key] = value
        try:
            self.client.create_order(order)
        except (Rejected, Permanent) as error:
            if is_duplicate(error) and not _names_checkout(error):
                return None  # already there: a retry of an order AC stored
            raise
        return None

    def _connection(self, store_id: int) -> str:
        if self._connection_id is None:
            externalid = f"store-{store_id}"
            self._connection_id = _find_or_create(
                lambda: self.client.find_connection(SERVICE, externalid),
                lambda: self.client.create_connection(
                    service=SERVICE,
                    externalid=externalid,
                    name=self.ecom_connection,
                    logo_url=LOGO_URL,
                    link_url=LINK_URL,
                ),
            )
        return self._connection_id

    def _customer(self, connection_id: str, email: str) -> str:
        key = email.lower()
        if key not in self._customers:
            self._customers[key] = _find_or_create(
                lambda: self.client.find_customer(connection_id, email),
                lambda: self.client.create_customer(connection_id, externalid=key, email=email),
            )
        return self._customers[key]

    # carts

    def send_carts(self, carts: Sequence[AbandonedCart]) -> Outcome:
        start = self.client.requests
        outcome = Outcome()
        for index, abandoned in enumerate(carts):
            if not abandoned.contact.email:
                outcome.skipped[index] = "no email (ActiveCampaign identifies contacts by email)"
                continue
            try:
                outcome.remote_ids[index] = self._send_cart(abandoned)
            except (Rejected, Permanent) as error:
                outcome.rejected[index] = error.message
            except EspError as error:
                self._failed(outcome, [i for i in range(index, len(carts)) if i not in outcome.skipped], error)
                break
        outcome.requests = self.client.requests - start
        return outcome

    def _send_cart(self, abandoned: AbandonedCart) -> str:
        cart, contact = abandoned.cart, abandoned.contact
        email = contact.email or ""
        connection_id = self._connection(contact.store_id)
        customer_id = self._customer(connection_id, email)
        checkout = cart.cart_id or f"cart-{cart.id}"
        lines = [
            _order_product(item.product_id, item.name, item.price_cents, item.quantity, item.sku, item.category)
            for item in abandoned.items
        ]
        order: dict[str, Any] = {
            "externalcheckoutid": checkout,
            "source": 1,
            "email": email,
            "orderProducts": lines,
            "totalPrice": sum((item.price_cents or 0) * item.quantity for item in abandoned.items),
            "currency": (cart.currency or DEFAULT_CURRENCY).upper(),
            "connectionid": _num(connection_id),
            "customerid": _num(customer_id),
            "externalCreatedDate": _iso(cart.created_at),
            "externalUpdatedDate": _iso(cart.last_activity_at),
            "abandonedDate": _iso(cart.last_activity_at),
        }
        known = self._carts.get(checkout)
        if known is None:
            try:
                known = self.client.create_order(order)
            except (Rejected, Permanent) as error:
                if not is_duplicate(error):
                    raise
                known = self.client.find_order(connection_id, externalcheckoutid=checkout)
                if known is None:
                    raise
                self.client.update_order(known, order)
        else:
            self.client.update_order(known, order)
        self._carts[checkout] = known
        return known

    # erasure

    def erase(self, contacts: Sequence[Contact]) -> Outcome:
        """The contact found by email, then ``DELETE /contacts/{id}``; not found is done (already gone)."""
        start = self.client.requests
        outcome = Outcome()
        for index, contact in enumerate(contacts):
            if not contact.email:
                outcome.skipped[index] = "no email (ActiveCampaign identifies contacts by email)"
                continue
            try:
                self._contact_ids.pop(contact.email.lower(), None)
                self._customers.pop(contact.email.lower(), None)
                contact_id = self.client.find_contact(contact.email)
                if contact_id is not None:
                    self.client.delete_contact(contact_id)
            except (Rejected, Permanent) as error:
                outcome.rejected[index] = error.message
            except EspError as error:
                self._failed(outcome, [i for i in range(index, len(contacts)) if i not in outcome.skipped], error)
                break
        outcome.requests = self.client.requests - start
        return outcome

    # segments

    def mirror_segment(
        self,
        name: str,
        entered: Sequence[Contact],
        exited: Sequence[Contact],
        *,
        subscribed: Collection[int] = (),
        list_id: str | None = None,
    ) -> Outcome:
        """Mirror a segment's changes; indexes run over ``entered`` then ``exited``.

        ``segment_mirror = "tags"``: the tag ``espbridge: <name>`` (created on first use) is added to those who
        entered and removed from those who left. ``"lists"``: ``list_id``, else a list per segment (created on
        first use); of those who entered, only the contacts whose ids are in ``subscribed`` (the caller knows their
        email consent) are added with status 1, the others skipped; those who left are unsubscribed from the
        segment's list. Mirroring never touches the consent list. Contacts not in ActiveCampaign yet are skipped
        (the profile sync adds them).
        """
        start = self.client.requests
        outcome = Outcome()
        people = [(contact, True) for contact in entered] + [(contact, False) for contact in exited]
        for index, (contact, entering) in enumerate(people):
            if not contact.email:
                outcome.skipped[index] = "no email (ActiveCampaign identifies contacts by email)"
                continue
            if self.segment_mirror == "lists" and entering and contact.id not in subscribed:
                outcome.skipped[index] = "not subscribed: lists mode adds subscribed contacts only"
                continue
            try:
                contact_id = self._contact_id(contact, create=False)
                if contact_id is None:
                    outcome.skipped[index] = NOT_IN_AC_YET
                    continue
                if self.segment_mirror == "lists":
                    target = list_id or self._segment_list(name)
                    self.client.set_list_status(contact_id, target, 1 if entering else 2)
                elif entering:
                    self.client.add_contact_tag(contact_id, self._segment_tag(name))
                else:
                    tag_id = self._segment_tag(name)
                    for contact_tag, tag in self.client.contact_tags(contact_id):
                        if tag == tag_id:
                            self.client.remove_contact_tag(contact_tag)
            except (Rejected, Permanent) as error:
                outcome.rejected[index] = error.message
            except EspError as error:
                self._failed(outcome, [i for i in range(index, len(people)) if i not in outcome.skipped], error)
                break
        outcome.requests = self.client.requests - start
        return outcome

    def mirror_membership(self, segment: SegmentRef, changes: Sequence[MembershipChange]) -> Outcome:
        """The sync engine's call: ``mirror_segment`` under the segment's configured tag (or its name) and, in
        lists mode, its configured ``list_id``, with the outcome's indexes mapped back to ``changes``."""
        entered = [i for i, change in enumerate(changes) if change.member]
        exited = [i for i, change in enumerate(changes) if not change.member]
        inner = self.mirror_segment(
            str(segment.mirror.get("tag") or segment.name),
            [changes[i].contact for i in entered],
            [changes[i].contact for i in exited],
            subscribed={changes[i].contact.id for i in entered if changes[i].subscribed},
            list_id=None if segment.mirror.get("list_id") is None else str(segment.mirror["list_id"]),
        )
        order = entered + exited
        outcome = Outcome(
            rejected={order[i]: reason for i, reason in inner.rejected.items()},
            skipped={order[i]: reason for i, reason in inner.skipped.items() if reason != NOT_IN_AC_YET},
            failed={order[i] for i in inner.failed},
            error=inner.error,
            requests=inner.requests,
        )
        # Not there yet: the profile sync is adding it; retried (with backoff) rather than lost.
        waiting = [order[i] for i, reason in inner.skipped.items() if reason == NOT_IN_AC_YET]
        if waiting:
            outcome.failed.update(waiting)
            outcome.error = outcome.error or Transient(f"{NOT_IN_AC_YET}: the profile sync adds it")
        return outcome

    def _segment_tag(self, name: str) -> str:
        tag = TAG_PREFIX + name
        if tag not in self._tags:
            found = self.client.find_tag(tag)
            if found is None:
                found = self.client.create_tag(tag, description=f"espbridge segment {name}")
            self._tags[tag] = found
        return self._tags[tag]

    def _segment_list(self, name: str) -> str:
        list_name = TAG_PREFIX + name
        if list_name not in self._lists:
            stringid = "espbridge-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
            found = next(
                (
                    str(row["id"])
                    for row in self.client.lists()
                    if row.get("stringid") == stringid or row.get("name") == list_name
                ),
                None,
            )
            if found is None:
                found = self.client.create_list(
                    list_name,
                    stringid=stringid,
                    sender_url=LINK_URL,
                    sender_reminder="You are on this list because you are in a segment of the store.",
                )
            self._lists[list_name] = found
        return self._lists[list_name]

    # plumbing

    def _failed(self, outcome: Outcome, indexes: Sequence[int], error: EspError) -> None:
        mark_failed(outcome, indexes, error, self._pause)


# --- helpers ---------------------------------------------------------------------------------------------------------


def field_value(value: Any) -> str | None:
    """A contact property as an AC field value: text; booleans ``true``/``false``; lists as AC's multi-value
    ``||a||b||``; objects as JSON; None: not sent (left unchanged)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "||" + "||".join(str(v) for v in value) + "||"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def event_name(name: str) -> str:
    """Our event name within trackcmp's 32 characters: as is when it fits, else a prefix and a digest of the
    whole name (deterministic, so the same event always gets the same AC name)."""
    if len(name) <= MAX_EVENT_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: MAX_EVENT_NAME - 9]}~{digest}"


def event_data(properties: Mapping[str, Any], message_id: str | None = None) -> str | None:
    """trackcmp's one ``eventdata`` string: the scalar properties (strings cut at 200 characters) as compact JSON,
    in key order, stopping before ``MAX_EVENTDATA`` characters; the messageId first, to tell a duplicate apart."""
    data: dict[str, Any] = {}
    if message_id:
        data["messageId"] = message_id
    for key in sorted(properties):
        value = properties[key]
        if isinstance(value, str):
            value = value[:MAX_EVENTDATA_STRING]
        elif not isinstance(value, int | float | bool):
            continue
        trial = {**data, key: value}
        if len(json.dumps(trial, separators=(",", ":"), ensure_ascii=False)) > MAX_EVENTDATA:
            break
        data = trial
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False) if data else None


def _order_product(
    product_id: str, name: str | None, price: int | None, quantity: int, sku: str | None, category: str | None
) -> dict[str, Any]:
    """One line of a Deep Data order's ``orderProducts`` (an order's product line or a cart's item)."""
    return {
        "externalid": product_id,
        "name": name or product_id,
        "price": price or 0,
        "quantity": quantity,
        **({"sku": sku} if sku else {}),
        **({"category": category} if category else {}),
    }


def _names_checkout(error: EspError) -> bool:
    return isinstance(error, Rejected) and any((r.pointer or "").endswith("externalcheckoutid") for r in error.records)


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _iso(value: dt.datetime) -> str:
    return _aware(value).isoformat(timespec="seconds")


def _num(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def _find_or_create(find: Callable[[], str | None], create: Callable[[], str]) -> str:
    """The id of an object found, or created. Another worker may create it between our look and our create
    (two first orders at once): ActiveCampaign's duplicate error then means "look again", not a refusal."""
    found = find()
    if found is not None:
        return found
    try:
        return create()
    except EspError as error:
        if not is_duplicate(error):
            raise
        again = find()
        if again is None:
            raise
        return again
