"""A store connected to Klaviyo and ActiveCampaign at once, through an ActiveCampaign outage: real PostgreSQL and
Redis, ``espbridge serve``, ``espbridge worker`` and the ESP sandbox (both parts in one process), each a real process;
both connections made with ``espbridge esp connect``.

The issue's scenario: the ActiveCampaign part answers every request with a 503 for ten minutes while changes keep
arriving. Every Klaviyo change must arrive on time all along (within the bounds of tests/e2e/test_sync_latency.py:
an identify within 5 s of its 200, a track within 30 s; measured per change, from the ingestion 200 to the moment
the Klaviyo sandbox's state shows it), and once ActiveCampaign answers again every change reaches it too, exactly
once, with nothing dead-lettered. While the outage lasts, the ActiveCampaign items wait, pending, with the 503 as
their last error (not dead letters).

Time is scaled by TIME_SCALE = 30, the same factor everywhere it applies:
- the outage: ten minutes → 600 / 30 = 20 s;
- the rate limits: the sandbox's --time-scale and both connections' rate_limit_scale divide the windows by 30
  (ActiveCampaign's 5 requests/s → 150/s, Klaviyo's windows likewise), so draining the backlog after the outage
  takes what it would take at real speed, divided by 30;
- the retries: ESPBRIDGE_RETRY_MIN_BACKOFF 15 s → 0.5 s, ESPBRIDGE_OUTBOX_VISIBILITY_TIMEOUT 300 s → 10 s,
  ESPBRIDGE_RETRY_MAX_AGE 60 s (30 minutes scaled, longer than the outage: an item that failed through all of it
  must not be dead). ESPBRIDGE_RETRY_MAX_BACKOFF is 2 s (one minute scaled) rather than the default hour scaled
  (120 s), so that the first retry after the outage comes within seconds, not up to two minutes later.
The latency bounds are NOT scaled: they are the issue's own, in real seconds, and the ingestion, the relay ticks
and the worker run at real speed.

Traffic: a change set per second (a new customer's identify, email consent, Product Viewed and Order Completed,
and a fresh first name for a customer of the first sets) before, during and after the outage.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from connector.credentials import new_key
from connector.store import Database, SyncItemStatus
from connector.tenancy import NewStore
from tests.services import RedisServer

from .activecampaign_support import (
    AC_SUBSCRIBED,
    AC_UNSUBSCRIBED,
    AcAdmin,
    connect_activecampaign,
    contacts_by_email,
    create_list,
    dead_letters,
    esp_connect,
    item_statuses,
    list_status,
    orders_by_externalid,
    pending_errors,
    post_batch,
    settled,
    statuses,
)
from .conftest import Launcher
from .processes import ServiceProcess, wait_until
from .sandbox_support import SandboxAdmin, running_sandbox
from .test_sync_latency import IDENTIFY_BOUND, TRACK_BOUND

pytestmark = [pytest.mark.slow, pytest.mark.integration]

KLAVIYO_KEY = "pk_e2e_dual_esp"
AC_TOKEN = "ac_e2e_dual_token"
AC_ACTID = "5151"
AC_EVENT_KEY = "ac_e2e_dual_event_key"
TIME_SCALE = 30.0
OUTAGE = 600.0 / TIME_SCALE  # ten minutes, scaled
BEFORE_SETS = 3
AFTER_SETS = 5
SET_INTERVAL = 1.0
#: Customers of the first sets whose first name changes again with each later set (round robin).
RENAMED = BEFORE_SETS
SETTLE_TIMEOUT = 60.0
POLL = 0.1


def _email(n: int) -> str:
    return f"dual-{n}@example.com"


def _consent(n: int) -> str:
    return "subscribed" if n % 3 else "unsubscribed"


@dataclass
class Expected:
    """A change expected at the Klaviyo sandbox: acknowledged at ``acked`` (monotonic), seen at ``seen``."""

    what: str
    kind: str  # "identify" or "track": which latency bound applies
    arrived: Callable[[dict[str, Any]], bool]
    acked: float
    seen: float | None = None

    @property
    def latency(self) -> float | None:
        return None if self.seen is None else self.seen - self.acked


@dataclass
class KlaviyoWatch:
    """Polls the Klaviyo part's state every POLL seconds on a thread, noting when each expected change shows."""

    url: str
    expected: list[Expected] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def add(self, changes: list[Expected]) -> None:
        with self.lock:
            self.expected.extend(changes)

    def run(self) -> None:
        admin = SandboxAdmin(self.url)
        deadline = time.monotonic() + 600  # bounded even if the test forgets to stop it
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                state = _indexed(admin.state())
                now = time.monotonic()
                with self.lock:
                    waiting = [e for e in self.expected if e.seen is None]
                for change in waiting:
                    if change.arrived(state):
                        change.seen = now
                self.stop.wait(POLL)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            admin.close()

    def all_seen(self) -> bool:
        with self.lock:
            return all(e.seen is not None for e in self.expected)


def _indexed(state: dict[str, Any]) -> dict[str, Any]:
    profiles = {p["attributes"]["email"]: p for p in state["profiles"]}
    return {
        "profiles": profiles,
        "events": Counter(e["unique_id"] for e in state["events"]),
        "subscriptions": {email: state["subscriptions"].get(p["id"], {}).get("email") for email, p in profiles.items()},
    }


def _set_number(first_name: str | None) -> int:
    """The change set a first name was given in ("First7", "Renamed12"); -1 for none."""
    digits = "".join(c for c in first_name or "" if c.isdigit())
    return int(digits) if digits else -1


def _profile_named(email: str, first_name: str) -> Callable[[dict[str, Any]], bool]:
    """The profile has this first name or a later one: changes of one profile coalesce while they wait, so a name
    superseded before it was sent never reaches the ESP, and its change arrives with the newer one."""

    def arrived(state: dict[str, Any]) -> bool:
        profile = state["profiles"].get(email)
        return profile is not None and _set_number(profile["attributes"].get("first_name")) >= _set_number(first_name)

    return arrived


def _event(message_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda state: state["events"][message_id] > 0


def _subscription(email: str, status: str) -> Callable[[dict[str, Any]], bool]:
    expected = "SUBSCRIBED" if status == "subscribed" else "UNSUBSCRIBED"
    return lambda state: state["subscriptions"].get(email) == expected


@dataclass
class Traffic:
    """What was sent and acknowledged: the latest first name and consent per email, the messageIds of the tracks
    that go to trackcmp (all but Order Completed), the order ids."""

    stored: int = 0
    names: dict[str, str] = field(default_factory=dict)
    consents: dict[str, str] = field(default_factory=dict)
    tracked: list[str] = field(default_factory=list)
    orders: list[str] = field(default_factory=list)
    klaviyo_events: list[str] = field(default_factory=list)


def _change_set(n: int) -> tuple[list[dict[str, Any]], dict[str, str], str, dict[str, str], str]:
    """Set n: customer n's identify, consent, Product Viewed and Order Completed, and (from set RENAMED on) a new
    first name for customer n % RENAMED. Returns the messages, email → first name, email, consent, order id."""
    timestamp = dt.datetime.now(dt.UTC).isoformat()
    user, email = f"dual-{n}", _email(n)
    order = f"dual-order-{n}"
    common = {"userId": user, "timestamp": timestamp}
    messages: list[dict[str, Any]] = [
        {"type": "identify", "messageId": f"s{n}-identify", "traits": {"email": email, "firstName": f"First{n}"}}
        | common,
        {
            "type": "track",
            "event": "Consent Updated",
            "messageId": f"s{n}-consent",
            "properties": {"channel": "email", "status": _consent(n)},
        }
        | common,
        {
            "type": "track",
            "event": "Product Viewed",
            "messageId": f"s{n}-viewed",
            "properties": {"product_id": f"sku-{n}"},
        }
        | common,
        {
            "type": "track",
            "event": "Order Completed",
            "messageId": f"s{n}-order",
            "properties": {
                "order_id": order,
                "total": 10 + n,
                "currency": "EUR",
                "products": [{"product_id": f"sku-{n}", "price": 10 + n, "quantity": 1}],
            },
        }
        | common,
    ]
    names = {email: f"First{n}"}
    if n >= RENAMED:
        old = n % RENAMED
        messages.append(
            {
                "type": "identify",
                "userId": f"dual-{old}",
                "timestamp": timestamp,
                "messageId": f"s{n}-rename-{old}",
                "traits": {"email": _email(old), "firstName": f"Renamed{n}"},
            }
        )
        names[_email(old)] = f"Renamed{n}"
    return messages, names, email, {email: _consent(n)}, order


@pytest.mark.parametrize("backend", ["postgresql"])
def test_an_activecampaign_outage_delays_no_klaviyo_change_and_loses_no_activecampaign_change(
    launcher: Launcher,
    service_env: dict[str, str],
    redis_server: RedisServer,
    store: NewStore,
    db: Database,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    queue = redis.Redis.from_url(redis_server.url)
    queue.flushdb()  # the Redis server is shared by the session: no job or limiter key of another test
    queue.close()
    env = {
        **service_env,
        "ESPBRIDGE_REDIS_URL": redis_server.url,
        "ESPBRIDGE_CREDENTIALS_KEY": new_key(),
        "ESPBRIDGE_RETRY_MIN_BACKOFF": str(15 / TIME_SCALE),
        "ESPBRIDGE_RETRY_MAX_BACKOFF": "2",
        "ESPBRIDGE_RETRY_MAX_AGE": "60",
        "ESPBRIDGE_OUTBOX_VISIBILITY_TIMEOUT": str(300 / TIME_SCALE),
    }
    with running_sandbox(
        tmp_path,
        api_key=KLAVIYO_KEY,
        time_scale=TIME_SCALE,
        ac_api_token=AC_TOKEN,
        ac_actid=AC_ACTID,
        ac_event_key=AC_EVENT_KEY,
    ) as sandbox:
        ac = AcAdmin(sandbox.url)
        watch = KlaviyoWatch(sandbox.url)
        poller = threading.Thread(target=watch.run, name="klaviyo-watch", daemon=True)
        poller.start()
        try:
            report = _run(launcher, env, store, db, sandbox, ac, watch, tmp_path / "logs")
        finally:
            watch.stop.set()
            poller.join(10)
            ac.close()
    with capsys.disabled():
        print(f"\n{report}")


def _run(
    launcher: Launcher,
    env: dict[str, str],
    store: NewStore,
    db: Database,
    sandbox: ServiceProcess,
    ac: AcAdmin,
    watch: KlaviyoWatch,
    log_dir: Path,
) -> str:
    # Given the store connected to both ESPs (an AC account with a list made in AC's UI), espbridge serve on
    # Redis and one espbridge worker
    list_id = create_list(sandbox.url, AC_TOKEN)
    esp_connect(env, store, "klaviyo", KLAVIYO_KEY, sandbox.url, "--setting", f"rate_limit_scale={TIME_SCALE}")
    connect_activecampaign(
        env,
        store,
        sandbox.url,
        token=AC_TOKEN,
        actid=AC_ACTID,
        event_key=AC_EVENT_KEY,
        list_id=list_id,
        rate_limit_scale=TIME_SCALE,
    )
    server = launcher.serve(env)
    launcher.worker(env)
    traffic = Traffic()
    sets = 0

    def send_set() -> None:
        nonlocal sets
        messages, names, email, consents, order = _change_set(sets)
        post_batch(server, store.write_key, messages)
        acked = time.monotonic()
        traffic.stored += len(messages)
        traffic.names.update(names)
        traffic.consents.update(consents)
        traffic.orders.append(order)
        expected = [
            Expected(f"identify {e} as {name}", "identify", _profile_named(e, name), acked) for e, name in names.items()
        ]
        for message in messages:
            if message["type"] == "track":
                traffic.klaviyo_events.append(message["messageId"])
                if message["event"] != "Order Completed":
                    traffic.tracked.append(message["messageId"])
                expected.append(Expected(f"event {message['messageId']}", "track", _event(message["messageId"]), acked))
        expected.append(Expected(f"consent of {email}", "track", _subscription(email, consents[email]), acked))
        watch.add(expected)
        sets += 1

    def paced(count: int, until: float | None = None) -> None:
        """``count`` sets one SET_INTERVAL apart (or as many as fit before ``until``)."""
        next_at = time.monotonic()
        while (until is None and count > 0) or (until is not None and time.monotonic() < until):
            time.sleep(max(0.0, next_at - time.monotonic()))
            send_set()
            next_at += SET_INTERVAL
            count -= 1

    # Before the outage both ESPs take the first sets (the first one alone: the AC adapter's first order creates
    # the Deep Data connection)
    send_set()
    wait_until(lambda: settled(db, store.id, traffic.stored), timeout=SETTLE_TIMEOUT, what="the first set at both")
    paced(BEFORE_SETS - 1)
    wait_until(lambda: settled(db, store.id, traffic.stored), timeout=SETTLE_TIMEOUT, what="the sets before")
    contacts_before = len(ac.state()["contacts"])

    # When ActiveCampaign answers every request with a 503 for ten minutes (scaled) while changes keep coming
    ac.set_faults(error_rate=1.0, error_status=503)
    outage_started = time.monotonic()
    paced(0, until=outage_started + OUTAGE / 2)

    # Then, while it lasts, the AC items wait pending with the 503 as their last error: none dead, none at AC
    waiting = wait_until(
        lambda: [e for e in pending_errors(db, store.id, "activecampaign") if e[1] >= 2],
        timeout=OUTAGE / 2,
        what="AC items retried during the outage",
    )
    tried = pending_errors(db, store.id, "activecampaign")
    assert all(error and "503" in error for _, _, error in tried), tried
    assert {kind for kind, _, _ in tried} >= {"profile", "consent", "event"}, tried
    assert SyncItemStatus.DEAD not in item_statuses(db, store.id, "activecampaign")
    assert dead_letters(env, store, "activecampaign")["total"] == 0
    assert len(ac.state()["contacts"]) == contacts_before
    paced(0, until=outage_started + OUTAGE)
    ac.set_faults()
    outage_ended = time.monotonic()

    # And the changes keep coming while ActiveCampaign's backlog drains
    paced(AFTER_SETS)

    # Then every change of both ESPs settles: every sync item done, none dead
    wait_until(lambda: settled(db, store.id, traffic.stored), timeout=SETTLE_TIMEOUT, what="every item to settle")
    ac_recovered = time.monotonic() - outage_ended
    wait_until(watch.all_seen, timeout=5, what="every Klaviyo change at the sandbox")
    assert watch.error is None, watch.error
    assert dead_letters(env, store)["total"] == 0
    ac_state = ac.state()
    ac_requests = ac.requests()
    (log_dir / "ac-requests.json").write_text(json.dumps(ac_requests, indent=1))
    klaviyo_state = SandboxAdmin(sandbox.url)
    try:
        k_state = klaviyo_state.state()
    finally:
        klaviyo_state.close()

    # Every Klaviyo change arrived on time, before, during and after the outage
    with watch.lock:
        expected = list(watch.expected)
    identify = [e.latency for e in expected if e.kind == "identify" and e.latency is not None]
    track = [e.latency for e in expected if e.kind == "track" and e.latency is not None]
    late = [
        (e.what, round(e.latency or 0, 2))
        for e in expected
        if (e.latency or 0) >= (IDENTIFY_BOUND if e.kind == "identify" else TRACK_BOUND)
    ]
    assert late == [], late

    # ...and exactly once: one profile per email as last named, every event once, each subscription as last set
    profiles = Counter(p["attributes"]["email"] for p in k_state["profiles"])
    assert profiles == Counter(set(traffic.names)), profiles
    events = Counter(e["unique_id"] for e in k_state["events"])
    assert events == Counter(set(traffic.klaviyo_events)), events

    # The outage happened: ActiveCampaign answered 503s the whole time and the items waited through it
    assert statuses(ac_requests)[503] >= 10, statuses(ac_requests)

    # Every ActiveCampaign change arrived after it: one contact per email as last named, on the list as last
    # consented, one order per Order Completed, every other track once at trackcmp (no kill here, and a 503 takes
    # no effect: so once, not "at least once")
    contacts = contacts_by_email(ac_state)
    assert sorted(contacts) == sorted(traffic.names)
    assert {email: len(found) for email, found in contacts.items() if len(found) != 1} == {}
    on_list = list_status(ac_state, list_id)
    for email, name in traffic.names.items():
        contact = contacts[email][0]
        assert contact["firstName"] == name, email
        expected_status = AC_SUBSCRIBED if traffic.consents[email] == "subscribed" else AC_UNSUBSCRIBED
        assert on_list.get(contact["id"]) == expected_status, email
    assert orders_by_externalid(ac_state) == Counter(set(traffic.orders))
    recorded = Counter(json.loads(e["eventdata"])["messageId"] for e in ac_state["trackedEvents"])
    assert recorded == Counter(set(traffic.tracked)), recorded

    return (
        f"dual ESP, ActiveCampaign 503 for {OUTAGE:.0f} s (ten minutes at scale {TIME_SCALE:g}), {sets} change sets, "
        f"{len(waiting)} AC items retried during it; Klaviyo latency identify max {max(identify):.2f} s "
        f"(median {sorted(identify)[len(identify) // 2]:.2f}), track max {max(track):.2f} s "
        f"(median {sorted(track)[len(track) // 2]:.2f}); ActiveCampaign settled {ac_recovered:.1f} s after the outage"
    )
