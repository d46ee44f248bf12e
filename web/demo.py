"""``espbridge demo``: a fresh embedded espbridge, shoppers in the example storefront, a summary.

It runs the real pieces as a user would: ``espbridge migrate``-equivalent on a new SQLite file, a store and
an admin user, the ESP sandbox (``espbridge sandbox``) as a child process with the store connected to it as its
Klaviyo account (subscriptions go to a "Newsletter" list created there), ``espbridge serve`` as a child process
(embedded broker, worker threads in the web process), then the example storefront of ``examples/storefront``
in this process, sending through the espbridge SDK to that ``serve``, with simulated shoppers clicking through
its pages (Flask's test client), the admin API read back, and what the sandbox received.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import click
import httpx
from espbridge import Client
from flask import Flask
from flask.testing import FlaskClient
from pydantic import SecretStr

from connector import migrate
from connector.credentials import CredentialCipher, new_key
from connector.esp import connections
from connector.esp.klaviyo import KlaviyoClient
from connector.sandbox.klaviyo import DEFAULT_API_KEY
from connector.store import Database, connect
from connector.tenancy import create_admin_user, create_store

READY_TIMEOUT = 30.0
SETTLE_TIMEOUT = 120.0
#: The example storefront of this source checkout. ``examples/`` is not part of the installed distribution.
STOREFRONT_DIR = Path(__file__).resolve().parents[1] / "examples" / "storefront"
SEED = 7


def run_demo(*, customers: int, port: int, db_path: str, exit_after: bool, as_json: bool) -> int:
    path = Path(db_path).resolve()
    for stale in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        stale.unlink(missing_ok=True)
    database_url = f"sqlite:///{path}"

    def say(message: str) -> None:
        if not as_json:
            click.echo(message, err=True)

    say(f"• creating {path.name} and migrating it")
    db = connect(database_url)
    migrate.upgrade(db)
    with db.writer() as session:
        store = create_store(session, "Demo Store", "Europe/Berlin")
        admin = create_admin_user(session, store.id, "admin@demo-store.example", "admin")

    base_env = {k: v for k, v in os.environ.items() if not k.startswith("ESPBRIDGE_")}
    sandbox_url = f"http://127.0.0.1:{_free_port()}"
    say(f"• starting the ESP sandbox (emulated Klaviyo, not the real one) on {sandbox_url}")
    sandbox = _spawn(
        ["sandbox", "--port", sandbox_url.rsplit(":", 1)[1]], {**base_env, "ESPBRIDGE_LOG_LEVEL": "WARNING"}
    )
    port = port or _free_port()
    base_url = f"http://127.0.0.1:{port}"
    credentials_key = new_key()  # this run's store only: the demo's database is recreated every time
    env = dict(base_env)
    env.update(
        ESPBRIDGE_DATABASE_URL=database_url,
        ESPBRIDGE_PORT=str(port),
        ESPBRIDGE_HOST="127.0.0.1",
        ESPBRIDGE_LOG_LEVEL="WARNING",
        ESPBRIDGE_CREDENTIALS_KEY=credentials_key,
    )
    server: subprocess.Popen[bytes] | None = None
    try:
        with httpx.Client(base_url=sandbox_url, timeout=30) as http:
            _wait_ready(http, sandbox, "/_sandbox/state", "espbridge sandbox")
        list_id = _connect_to_sandbox(db, store.id, sandbox_url, credentials_key)
        db.dispose()
        say(f"• store {store.id} connected to the sandbox's Klaviyo (subscriptions go to list {list_id})")
        say(f"• starting espbridge serve on {base_url} (embedded broker)")
        server = _spawn(["serve"], env)
        with httpx.Client(base_url=base_url, timeout=30) as http:
            _wait_ready(http, server, "/healthz", "espbridge serve")
            sent = _run_shoppers(base_url, store.write_key, customers, say)
            stats = _settle(http, admin.token, say)
        with httpx.Client(base_url=sandbox_url, timeout=30) as http:
            esp = _sandbox_summary(http.get("/_sandbox/state").json(), sandbox_url)
        summary = {
            "url": base_url,
            "store_id": store.id,
            "write_key": store.write_key,
            "admin_token": admin.token,
            "messages_sent": sent,
            **stats,
            "sandbox": esp,
        }
        _print_summary(summary, as_json)
        if not exit_after:
            say(
                f"\nespbridge is serving on {base_url} — try:\n"
                f"  curl -H 'Authorization: Bearer {admin.token}' {base_url}/admin/api/stats\n"
                f"  curl {sandbox_url}/_sandbox/state   (what the emulated Klaviyo holds)\n"
                "Ctrl-C stops it."
            )
            server.wait()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        for process in (server, sandbox):
            if process is not None:
                _stop(process)
        db.dispose()


def _spawn(arguments: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "web.cli", *arguments]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, start_new_session=True)


def _connect_to_sandbox(db: Database, store_id: int, sandbox_url: str, credentials_key: str) -> str:
    """Connect the store to the sandbox as its Klaviyo account, with a newsletter list for subscriptions."""
    with KlaviyoClient(DEFAULT_API_KEY, base_url=sandbox_url, timeout=10) as klaviyo:
        # Single opt-in: the storefront's signup form collects the consent (our ledger records it).
        list_id = klaviyo.create_list("Newsletter (espbridge demo)", opt_in_process="single_opt_in")
    with db.writer() as session:
        cipher = CredentialCipher(SecretStr(credentials_key))
        connections.connect(
            session,
            cipher,
            store_id,
            "klaviyo",
            api_key=DEFAULT_API_KEY,
            base_url=sandbox_url,
            settings={"list_id": list_id},
        )
    return list_id


def _sandbox_summary(state: dict[str, Any], url: str) -> dict[str, Any]:
    """What the sandbox's emulated Klaviyo account received."""
    consents = [channels.get("email") for channels in state["subscriptions"].values()]
    return {
        "url": url,
        "profiles": len(state["profiles"]),
        "events": len(state["events"]),
        "metrics": sorted(state["metrics"]),
        "email_subscribed": consents.count("SUBSCRIBED"),
        "email_unsubscribed": consents.count("UNSUBSCRIBED"),
        "lists": {entry["name"]: len(entry["members"]) for entry in state["lists"].values()},
        "requests": state["requests"]["total"],
    }


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(http: httpx.Client, process: subprocess.Popen[bytes], path: str, name: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise click.ClickException(f"{name} exited with status {process.returncode}")
        try:
            if http.get(path).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise click.ClickException(f"{name} did not answer within {READY_TIMEOUT:.0f} s")


def _run_shoppers(url: str, write_key: str, customers: int, say: Callable[[str], None]) -> int:
    """Shoppers click through the example storefront, which sends with the SDK; returns how many messages."""
    storefront = _load_storefront()
    failures: list[Exception] = []
    # No spool: the demo's store and write key live only as long as this run, so nothing is worth keeping.
    client = Client(write_key, host=url, spool=False, on_error=lambda error, *_: failures.append(error))
    admin_token = secrets.token_urlsafe(16)
    app: Flask = storefront.create_app(client, admin_token=admin_token)
    back_office = app.test_client()
    back_office.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {admin_token}"
    rng = random.Random(f"espbridge-demo:{SEED}")
    try:
        _request(back_office, "POST", "/admin/inventory")  # the shop connects: its catalog and stock
        label = "  shoppers in the storefront"
        with click.progressbar(range(1, customers + 1), label=label, file=sys.stderr, show_pos=True) as bar:
            for number in bar:
                _Shopper(app.test_client(), rng, number).visit(storefront.CATALOG)
        for item in storefront.CATALOG:  # the sold-out products come back: their waitlists are due a mail
            if item.stock == 0:
                _request(back_office, "POST", f"/admin/restock/{item.product_id}", quantity="20")
        delivered = client.flush()
    finally:
        client.shutdown()
    if failures or not delivered:
        raise click.ClickException(f"the SDK could not deliver everything: {failures[:3] or 'flush timed out'}")
    sent = client.stats().sent
    say(f"• {sent} messages sent by the SDK and acknowledged (committed)")
    return sent


def _load_storefront() -> ModuleType:
    """``examples/storefront`` of this checkout, loaded by path: ``examples/`` is not an installed package.

    A private module name keeps it apart from any ``examples`` package on ``sys.path``.
    """
    name = "_espbridge_demo_storefront"
    if name in sys.modules:
        return sys.modules[name]
    init = STOREFRONT_DIR / "__init__.py"
    if not init.is_file():
        raise click.ClickException(f"the demo runs the example storefront of a source checkout: {init} is missing")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(STOREFRONT_DIR)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it, so that its relative imports find their package
    spec.loader.exec_module(module)
    return module


# Who the shoppers are: example.com mailboxes and RFC 5737 documentation addresses, never a real person's.
_FIRST_NAMES = ("Anna", "Ben", "Chloe", "David", "Elena", "Felix", "Grace", "Hugo", "Ines", "Jonas", "Maya", "Noah")
_LAST_NAMES = ("Andersen", "Becker", "Costa", "Dubois", "Evans", "Fischer", "Garcia", "Hansen", "Keller", "Rossi")
_NETWORKS = ("192.0.2", "198.51.100", "203.0.113")
_LANGUAGES = ("de-DE", "fr-FR", "nl-NL", "es-ES", "en-IE")
_USER_AGENTS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
)


class _Shopper:
    """One visitor's browser. What they do is drawn from ``rng``, so every run of the demo is the same day."""

    def __init__(self, browser: FlaskClient, rng: random.Random, number: int) -> None:
        self.browser = browser
        self.rng = rng
        browser.environ_base.update(
            REMOTE_ADDR=f"{rng.choice(_NETWORKS)}.{rng.randrange(1, 255)}",
            HTTP_USER_AGENT=rng.choice(_USER_AGENTS),
            HTTP_ACCEPT_LANGUAGE=rng.choice(_LANGUAGES),
        )
        self.first_name = rng.choice(_FIRST_NAMES)
        self.email = f"{self.first_name.lower()}.{rng.choice(_LAST_NAMES).lower()}+{number}@example.com"
        self.signed_up = False

    def visit(self, catalog: Sequence[Any]) -> None:
        """Browse a few products; maybe ask to hear of a sold-out one, fill a cart, sign up, check out."""
        rng = self.rng
        _request(self.browser, "GET", "/")
        if rng.random() < 0.1:
            self.sign_up()
        carted: list[str] = []
        for item in rng.sample(catalog, rng.randint(1, 4)):
            _request(self.browser, "GET", f"/products/{item.product_id}")
            if item.stock == 0:
                if rng.random() < 0.4:
                    _request(self.browser, "POST", f"/products/{item.product_id}/notify", email=self.email)
            elif rng.random() < 0.5:
                _request(self.browser, "POST", f"/cart/add/{item.product_id}")
                carted.append(item.product_id)
        if len(carted) > 1 and rng.random() < 0.2:
            carted.remove(product_id := rng.choice(carted))
            _request(self.browser, "POST", f"/cart/remove/{product_id}")
        if not self.signed_up and rng.random() < 0.2:
            self.sign_up()
        if carted and rng.random() < 0.6:  # the others leave their cart behind
            _request(self.browser, "GET", "/checkout")
            if rng.random() < 0.85:
                _request(self.browser, "POST", "/checkout", email=self.email)

    def sign_up(self) -> None:
        form = {"email": self.email, "first_name": self.first_name}
        if self.rng.random() < 0.6:
            form["email_consent"] = "yes"
        _request(self.browser, "POST", "/signup", **form)
        self.signed_up = True


def _request(browser: FlaskClient, method: str, path: str, **form: str) -> None:
    """One click (redirects followed, as a browser does); anything but a page is a bug of the demo."""
    response = browser.open(path, method=method, data=form, follow_redirects=True)
    if response.status_code != 200:
        raise click.ClickException(f"the storefront answered {response.status} to {method} {path}")


def _settle(http: httpx.Client, token: str, say: Callable[[str], None]) -> dict[str, Any]:
    """Wait until every event is projected, every outbox row fanned out and every change synced to the ESP."""
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + SETTLE_TIMEOUT
    last = ""
    while True:
        stats: dict[str, Any] = http.get("/admin/api/stats", headers=headers).json()
        sync = stats["sync"].get("klaviyo", {})
        busy = stats["events_unprojected"] + stats["outbox"]["pending"] + stats["outbox"]["enqueued"]
        busy += sync.get("pending", 0) + sync.get("enqueued", 0)
        line = (
            f"  projecting: {stats['events'] - stats['events_unprojected']}/{stats['events']} events, "
            f"outbox delivered {stats['outbox']['done']}, synced to Klaviyo {sync.get('done', 0)}"
        )
        if line != last:
            say(line)
            last = line
        if busy == 0 or time.monotonic() > deadline:
            return stats
        time.sleep(0.25)


def _print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    consent = summary["consent_state"]
    esp = summary["sandbox"]
    lines = [
        "",
        "What landed in the local store:",
        f"  events stored        {summary['events']} (of {summary['messages_sent']} sent; "
        f"{summary['events_not_applied']} not applicable)",
        f"  contacts             {summary['contacts']} (+{summary['contacts_merged']} merged identities)",
        f"  orders               {summary['orders']}",
        f"  open carts           {summary['carts_open']}",
        f"  consent ledger rows  {summary['consent_ledger_entries']}  "
        + ", ".join(f"{k} {v}" for k, v in sorted(consent.items())),
        f"  waitlist entries     {summary['waitlist_entries']}",
        f"  catalog products     {summary['products']}",
        "  outbox rows          " + ", ".join(f"{k} {v}" for k, v in summary["outbox"].items()),
        "  synced to Klaviyo    " + ", ".join(f"{k} {v}" for k, v in summary["sync"].get("klaviyo", {}).items()),
        "",
        f"What the ESP sandbox (emulated Klaviyo at {esp['url']}) received, in {esp['requests']} requests:",
        f"  profiles             {esp['profiles']}",
        f"  events               {esp['events']} ({len(esp['metrics'])} metrics: {', '.join(esp['metrics'])})",
        f"  email subscriptions  {esp['email_subscribed']} subscribed, {esp['email_unsubscribed']} unsubscribed",
        "  lists                " + ", ".join(f"{name}: {n} members" for name, n in esp["lists"].items()),
        "",
        f"  URL          {summary['url']}   (OpenAPI: {summary['url']}/openapi.json)",
        f"  write key    {summary['write_key']}",
        f"  admin token  {summary['admin_token']}",
    ]
    click.echo("\n".join(lines))


def _stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
