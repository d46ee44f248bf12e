"""The ``espbridge`` command line. Every command that prints data takes ``--json``."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from typing import Any

import click

from connector import migrate as migrations
from connector.credentials import CredentialCipher, new_key
from connector.errors import EspbridgeError
from connector.esp import connections
from connector.esp.errors import EspError
from connector.runtime import Runtime
from connector.store import Role, connect
from connector.sync.adapters import check_settings
from connector.tenancy import create_admin_user, create_store, find_store

from .cli_audit import audit_group
from .cli_consent import consent
from .cli_context import Context, emit, pass_context
from .cli_erasure import erase, erasures
from .cli_rfm import rfm_group
from .cli_segments import segments_group
from .cli_sync import dead_letters, sync


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="espbridge")
@pass_context
def main(ctx: Context) -> None:
    """espbridge: own your customer-marketing data and keep your ESPs in sync with it.

    Configuration comes from ESPBRIDGE_* environment variables (see the README).
    """
    logging.basicConfig(level=ctx.settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("httpx", "alembic"):  # one line per request / per migration step is noise at INFO
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def migrate(ctx: Context, as_json: bool) -> None:
    """Create or upgrade the database schema (idempotent)."""
    db = connect(ctx.settings.database_url)
    try:
        migrations.upgrade(db)
        revision = migrations.current_revision(db)
    finally:
        db.dispose()
    emit(
        {"revision": revision, "database": db.engine.url.render_as_string()},
        as_json,
        [f"schema at revision {revision}"],
    )


@main.group()
def stores() -> None:
    """Manage stores (tenants)."""


@stores.command("create")
@click.argument("name")
@click.option("--timezone", default="UTC", show_default=True, help="IANA time zone of the store.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def stores_create(ctx: Context, name: str, timezone: str, as_json: bool) -> None:
    """Create a store and print its id and write key (shown once)."""
    db = connect(ctx.settings.database_url)
    try:
        with db.writer() as session:
            store = create_store(session, name, timezone)
    except EspbridgeError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        db.dispose()
    data = {"id": store.id, "name": store.name, "timezone": store.timezone, "write_key": store.write_key}
    emit(data, as_json, [f"store {store.id} {store.name!r} ({store.timezone})", f"write key: {store.write_key}"])


@stores.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def stores_list(ctx: Context, as_json: bool) -> None:
    """List stores."""
    import sqlalchemy as sa

    from connector.store import Store

    db = connect(ctx.settings.database_url)
    try:
        with db.reader() as session:
            rows = [
                {"id": s.id, "name": s.name, "timezone": s.timezone, "double_opt_in": list(s.double_opt_in or [])}
                for s in session.scalars(sa.select(Store).order_by(Store.id))
            ]
    finally:
        db.dispose()
    lines = [f"{r['id']}\t{r['name']}\t{r['timezone']}\tdouble opt-in: {_channels(r['double_opt_in'])}" for r in rows]
    emit({"stores": rows}, as_json, lines)


def _channels(channels: Any) -> str:
    return ", ".join(channels) or "off"


@stores.command("double-opt-in")
@click.option("--store", "store_id", type=int, help="Store id (may be left out when there is one store).")
@click.option("--channels", help="Comma-separated channels whose grants wait for a confirmation (email,sms,…).")
@click.option("--off", is_flag=True, help="Turn double opt-in off on every channel.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def stores_double_opt_in(ctx: Context, store_id: int | None, channels: str | None, off: bool, as_json: bool) -> None:
    """Require a confirmation (double opt-in) for new grants on some channels, or turn it off."""
    from connector.store import Channel

    if off == (channels is not None):
        raise click.UsageError("give exactly one of --channels and --off")
    chosen = [] if off else sorted({c.strip() for c in (channels or "").split(",") if c.strip()})
    unknown = [c for c in chosen if c not in set(Channel)]
    if unknown or not (off or chosen):
        raise click.BadParameter(
            f"unknown channel(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(Channel)}",
            param_hint="--channels",
        )
    db = connect(ctx.settings.database_url)
    try:
        with db.writer() as session:
            store = find_store(session, store_id)
            store.double_opt_in = chosen
    except EspbridgeError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        db.dispose()
    emit(
        {"store_id": store.id, "double_opt_in": chosen},
        as_json,
        [f"store {store.id} double opt-in: {', '.join(chosen) or 'off'}"],
    )


@main.group()
def users() -> None:
    """Manage admin users."""


@users.command("create")
@click.argument("email")
@click.option("--role", type=click.Choice([r.value for r in Role]), required=True)
@click.option("--store", "store_id", type=int, help="Store id (may be left out when there is one store).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def users_create(ctx: Context, email: str, role: str, store_id: int | None, as_json: bool) -> None:
    """Create an admin user and print their API token (shown once)."""
    db = connect(ctx.settings.database_url)
    try:
        with db.writer() as session:
            store = find_store(session, store_id)
            user = create_admin_user(session, store.id, email, role)
    except EspbridgeError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        db.dispose()
    data = {"id": user.id, "store_id": user.store_id, "email": user.email, "role": user.role.value, "token": user.token}
    emit(data, as_json, [f"user {user.email} ({user.role.value}) in store {user.store_id}", f"token: {user.token}"])


@main.command()
@click.option("--host", help="Bind address [ESPBRIDGE_HOST].")
@click.option("--port", type=int, help="Port [ESPBRIDGE_PORT].")
@click.option("--workers", type=int, help="gunicorn worker processes [ESPBRIDGE_WEB_WORKERS].")
@click.option("--threads", type=int, help="Threads per worker [ESPBRIDGE_WEB_THREADS].")
@pass_context
def serve(ctx: Context, host: str | None, port: int | None, workers: int | None, threads: int | None) -> None:
    """Run the HTTP service under gunicorn (ingestion, webhooks, admin API)."""
    from .server import Server

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = ctx.settings.model_copy(update=overrides)
    Server(settings, workers=workers or settings.web_workers, threads=threads or settings.web_threads).run()


@main.command()
@click.option("--threads", type=int, help="Worker threads [ESPBRIDGE_WORKER_THREADS].")
@pass_context
def worker(ctx: Context, threads: int | None) -> None:
    """Run Dramatiq worker threads and the outbox relay until SIGINT/SIGTERM."""
    settings = ctx.settings.model_copy(update={"worker_threads": threads} if threads else {})
    if settings.embedded_broker:
        click.echo("ESPBRIDGE_REDIS_URL is unset: this worker serves only its own embedded broker", err=True)
    runtime = Runtime(settings)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    runtime.start_background()
    click.echo(f"worker running ({settings.worker_threads} threads); Ctrl-C stops it", err=True)
    stop.wait()
    runtime.close()


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address.")
@click.option("--port", default=8100, show_default=True, help="Port (0: any free port).")
@click.option(
    "--time-scale",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Divide the rate-limit windows' lengths by this (60: a steady minute lasts a second).",
)
@click.option(
    "--api-key",
    "api_keys",
    multiple=True,
    help="Accepted Klaviyo private key (repeatable). Default: pk_sandbox_klaviyo.",
)
@click.option(
    "--job-delay",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds a bulk job takes from queued through processing to complete (divided by --time-scale).",
)
@click.option(
    "--ac-api-token",
    "ac_api_tokens",
    multiple=True,
    help="Accepted ActiveCampaign Api-Token (repeatable). Default: ac_sandbox_token.",
)
@click.option("--ac-actid", default="1000000", show_default=True, help="ActiveCampaign trackcmp account id (actid).")
@click.option(
    "--ac-event-key", default="ac_sandbox_event_key", show_default=True, help="ActiveCampaign trackcmp event key."
)
def sandbox(
    host: str,
    port: int,
    time_scale: float,
    api_keys: tuple[str, ...],
    job_delay: float,
    ac_api_tokens: tuple[str, ...],
    ac_actid: str,
    ac_event_key: str,
) -> None:
    """Run the ESP sandbox: a local emulation of the Klaviyo and ActiveCampaign APIs. NOT the real services;
    state is in memory."""
    from connector.sandbox import (
        DEFAULT_API_KEY,
        DEFAULT_API_TOKEN,
        ActiveCampaignSandbox,
        KlaviyoSandbox,
        Sandbox,
        SandboxServer,
    )

    klaviyo = KlaviyoSandbox(api_keys=api_keys or (DEFAULT_API_KEY,), time_scale=time_scale, job_delay=job_delay)
    activecampaign = ActiveCampaignSandbox(
        api_tokens=ac_api_tokens or (DEFAULT_API_TOKEN,),
        actid=ac_actid,
        event_key=ac_event_key,
        time_scale=time_scale,
        job_delay=job_delay,
    )
    server = SandboxServer(Sandbox(klaviyo, activecampaign), host=host, port=port)
    click.echo(
        f"espbridge ESP sandbox (NOT Klaviyo, NOT ActiveCampaign: nothing reaches the real services) emulating "
        f"Klaviyo revision {klaviyo.revision} at {server.url}/api/ ({len(klaviyo.api_keys)} accepted key(s)) and "
        f"ActiveCampaign v3 at {server.url}/api/3/ + trackcmp at {server.url}/event "
        f"({len(activecampaign.api_tokens)} accepted token(s)); admin: {server.url}/_sandbox/ and "
        f"{server.url}/_sandbox/activecampaign/, time scale {time_scale:g}",
        err=True,
    )
    server.serve_forever()


@main.command()
@click.option("--customers", default=300, show_default=True, help="Customers in the generated storefront day.")
@click.option("--port", default=8000, show_default=True, help="Port to serve on (0: any free port).")
@click.option("--db", "db_path", default="espbridge-demo.db", show_default=True, help="SQLite file (recreated).")
@click.option("--exit", "exit_after", is_flag=True, help="Stop after printing the summary instead of serving on.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def demo(customers: int, port: int, db_path: str, exit_after: bool, as_json: bool) -> None:
    """Run a whole storefront day through a fresh embedded espbridge and show what landed."""
    from .demo import run_demo

    sys.exit(run_demo(customers=customers, port=port, db_path=db_path, exit_after=exit_after, as_json=as_json))


@main.group()
def esp() -> None:
    """Connections to ESP accounts (credentials are stored encrypted with ESPBRIDGE_CREDENTIALS_KEY)."""


@esp.command("keygen")
def esp_keygen() -> None:
    """Print a new key for ESPBRIDGE_CREDENTIALS_KEY."""
    click.echo(new_key())


@esp.command("connect")
@click.argument("esp_name", metavar="ESP", type=click.Choice(sorted(connections.DEFAULT_BASE_URLS)))
@click.option(
    "--api-key",
    envvar="ESPBRIDGE_ESP_API_KEY",
    prompt=True,
    hide_input=True,
    help="The account's private API key (or ESPBRIDGE_ESP_API_KEY; asked for when left out).",
)
@click.option("--base-url", help="The API's base URL (default: the real ESP; the sandbox's URL for tests and demos).")
@click.option(
    "--webhook-secret",
    envvar="ESPBRIDGE_ESP_WEBHOOK_SECRET",
    help="The secret the ESP signs webhooks to this store with (default: keep the current one).",
)
@click.option(
    "--setting",
    "setting_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="A connection setting (repeatable; VALUE is JSON, or else text; null removes it). Klaviyo: list_id, "
    "mapping; ActiveCampaign: see README; both: timeout, rate_limit_scale. Settings not given are kept.",
)
@click.option(
    "--event-key",
    envvar="ESPBRIDGE_ESP_EVENT_KEY",
    help="ActiveCampaign only: the event-tracking key (Settings → Tracking → Event Tracking), stored encrypted.",
)
@click.option("--store", "store_id", type=int, help="Store id (may be left out when there is one store).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def esp_connect(
    ctx: Context,
    esp_name: str,
    api_key: str,
    base_url: str | None,
    webhook_secret: str | None,
    setting_pairs: tuple[str, ...],
    event_key: str | None,
    store_id: int | None,
    as_json: bool,
) -> None:
    """Connect a store to an ESP account, replacing an earlier connection to the same ESP."""
    if event_key is not None and esp_name != "activecampaign":
        raise click.BadParameter("only ActiveCampaign has an event key", param_hint="--event-key")
    db = connect(ctx.settings.database_url)
    try:
        cipher = CredentialCipher(ctx.settings.credentials_key)
        with db.writer() as session:
            store = find_store(session, store_id)
            current = {row.esp: dict(row.settings) for row in connections.connections(session, store.id)}
            settings = _merged_settings(current.get(esp_name, {}), setting_pairs)
            check_settings(esp_name, settings)
            row = connections.connect(
                session,
                cipher,
                store.id,
                esp_name,
                api_key=api_key,
                base_url=base_url,
                webhook_secret=webhook_secret,
                settings=settings,
                secrets=None if event_key is None else {"event_key": event_key},
            )
            url = row.base_url
    except EspbridgeError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        db.dispose()
    data = {"store_id": store.id, "esp": esp_name, "base_url": url, "settings": settings}
    emit(data, as_json, [f"store {store.id} connected to {esp_name} at {url} (API key stored encrypted)"])


def _merged_settings(current: dict[str, Any], pairs: tuple[str, ...]) -> dict[str, Any]:
    settings = dict(current)
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--setting")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        if value is None:
            settings.pop(key, None)
        else:
            settings[key] = value
    return settings


@esp.command("register-webhook")
@click.argument("esp_name", metavar="ESP", type=click.Choice(["klaviyo", "activecampaign"]))
@click.option(
    "--url",
    required=True,
    help="The store's public webhook URL: https://<host>/webhooks/<esp>/<store id> (for activecampaign the secret "
    "token is appended to it).",
)
@click.option("--store", "store_id", type=int, help="Store id (may be left out when there is one store).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def esp_register_webhook(ctx: Context, esp_name: str, url: str, store_id: int | None, as_json: bool) -> None:
    """Register the store's webhook URL with the ESP for its engagement topics, signed with the stored secret
    (ActiveCampaign, which does not sign: with the secret as the URL's last segment, printed masked)."""
    import secrets

    from connector.esp.klaviyo import KlaviyoClient
    from connector.esp.klaviyo_webhooks import TOPICS

    if esp_name == "activecampaign":
        _register_activecampaign_webhook(ctx, url, store_id, as_json)
        return

    db = connect(ctx.settings.database_url)
    try:
        cipher = CredentialCipher(ctx.settings.credentials_key)
        with db.reader() as session:
            store = find_store(session, store_id)
            connection = connections.load(session, cipher, store.id, esp_name)
        secret = connection.webhook_secret.get_secret_value() if connection.webhook_secret else None
        secret = secret or secrets.token_urlsafe(32)  # a new one, stored only once the ESP accepted it
        with KlaviyoClient(connection.api_key.get_secret_value(), base_url=connection.base_url) as client:
            webhook_id = client.create_webhook(
                name=f"espbridge store {store.id}", endpoint_url=url, secret_key=secret, topics=TOPICS
            )
        with db.writer() as session:
            connections.set_webhook_secret(session, cipher, store.id, esp_name, secret)
    except (EspbridgeError, EspError) as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        db.dispose()
    data = {"store_id": store.id, "esp": esp_name, "webhook_id": webhook_id, "url": url, "topics": list(TOPICS)}
    emit(data, as_json, [f"store {store.id}: {esp_name} webhook {webhook_id} → {url} ({len(TOPICS)} topics)"])


def _register_activecampaign_webhook(ctx: Context, endpoint: str, store_id: int | None, as_json: bool) -> None:
    import secrets

    from connector.esp import activecampaign_webhooks as ac

    db = connect(ctx.settings.database_url)
    try:
        cipher = CredentialCipher(ctx.settings.credentials_key)
        with db.reader() as session:
            store = find_store(session, store_id)
            connection = connections.load(session, cipher, store.id, ac.ESP)
        token = connection.webhook_secret.get_secret_value() if connection.webhook_secret else None
        token = token or secrets.token_urlsafe(32)  # a new one, stored only once ActiveCampaign accepted it
        try:
            url = ac.webhook_url(endpoint, token)
        except ValueError as exc:
            raise click.UsageError(f"{exc}; set a new one with esp connect --webhook-secret") from None
        webhook_id = ac.register_webhook(
            connection.base_url, connection.api_key.get_secret_value(), url, name=f"espbridge store {store.id}"
        )
        with db.writer() as session:
            connections.set_webhook_secret(session, cipher, store.id, ac.ESP, token)
    except (EspbridgeError, EspError) as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        db.dispose()
    shown = ac.masked(url, token)
    data = {"store_id": store.id, "esp": ac.ESP, "webhook_id": webhook_id, "url": shown, "events": list(ac.EVENTS)}
    emit(data, as_json, [f"store {store.id}: {ac.ESP} webhook {webhook_id} → {shown} ({len(ac.EVENTS)} events)"])


@esp.command("poll")
@click.argument("esp_name", metavar="ESP", type=click.Choice(["klaviyo"]))
@click.option("--since", type=click.DateTime(), help="Start here (UTC) instead of at the stored cursor.")
@click.option("--store", "store_id", type=int, help="Store id (may be left out when there is one store).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def esp_poll(ctx: Context, esp_name: str, since: Any, store_id: int | None, as_json: bool) -> None:
    """Fetch the ESP's engagement events since the stored cursor and record them (the fallback for webhooks)."""
    import datetime as dt

    from connector.esp import klaviyo_poll

    db = connect(ctx.settings.database_url)
    try:
        with db.reader() as session:
            store = find_store(session, store_id)
        start = since.replace(tzinfo=dt.UTC) if since is not None else None
        result = klaviyo_poll.poll(db, CredentialCipher(ctx.settings.credentials_key), store.id, since=start)
    except (EspbridgeError, EspError) as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        db.dispose()
    line = (
        f"store {store.id}: {result.fetched} {esp_name} events since {result.since:%Y-%m-%d %H:%M:%S} UTC: "
        f"{result.recorded} recorded, {result.duplicates} already known, {result.consent_entries} consent entries; "
        f"next poll from {result.next_since:%Y-%m-%d %H:%M:%S} UTC" + ("" if result.complete else " (more to fetch)")
    )
    emit(result.as_dict(), as_json, [line])


@esp.command("list")
@click.option("--store", "store_id", type=int, help="Store id (may be left out when there is one store).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_context
def esp_list(ctx: Context, store_id: int | None, as_json: bool) -> None:
    """List a store's ESP connections (never their credentials)."""
    db = connect(ctx.settings.database_url)
    try:
        with db.reader() as session:
            store = find_store(session, store_id)
            rows = [(row.esp, row.base_url, row.updated_at) for row in connections.connections(session, store.id)]
    except EspbridgeError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        db.dispose()
    listed = [{"esp": name, "base_url": url, "updated_at": updated_at} for name, url, updated_at in rows]
    lines = [f"{name}\t{url}\tupdated {updated_at:%Y-%m-%d %H:%M} UTC" for name, url, updated_at in rows]
    emit({"store_id": store.id, "connections": listed}, as_json, lines or [f"store {store.id} has no ESP connection"])


@esp.command("disconnect")
@click.argument("esp_name", metavar="ESP", type=click.Choice(sorted(connections.DEFAULT_BASE_URLS)))
@click.option("--store", "store_id", type=int, help="Store id (may be left out when there is one store).")
@pass_context
def esp_disconnect(ctx: Context, esp_name: str, store_id: int | None) -> None:
    """Remove a store's connection to an ESP (its stored credentials are deleted)."""
    db = connect(ctx.settings.database_url)
    try:
        with db.writer() as session:
            store = find_store(session, store_id)
            connections.disconnect(session, store.id, esp_name)
    except EspbridgeError as exc:
        raise click.UsageError(str(exc)) from None
    finally:
        db.dispose()
    click.echo(f"store {store.id} disconnected from {esp_name}")


main.add_command(sync)
main.add_command(dead_letters)
main.add_command(consent)
main.add_command(erase)
main.add_command(erasures)
main.add_command(audit_group, "audit")
main.add_command(segments_group, "segments")
main.add_command(rfm_group, "rfm")

if __name__ == "__main__":
    main()
