"""HTTP plumbing the ESP clients share: an ``httpx.Client`` that always has a timeout, and one request whose
network failures become ``Transient`` (the caller maps HTTP statuses: that is ESP-specific)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import httpx

from ..errors import InvalidInput
from .errors import Transient


def http_client(
    *,
    base_url: str,
    timeout: float | httpx.Timeout,
    transport: httpx.BaseTransport | None,
    headers: Mapping[str, str],
) -> httpx.Client:
    """A client for one ESP account; ``timeout`` (seconds or an ``httpx.Timeout``) must be set, never None."""
    if timeout is None:
        raise InvalidInput("timeout", "must be set")
    return httpx.Client(
        base_url=base_url,
        timeout=timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout),
        transport=transport,
        headers=dict(headers),
    )


def send_request(
    http: httpx.Client,
    method: str,
    url: str,
    *,
    content: bytes | None,
    headers: Mapping[str, str],
    where: str,
    log: logging.Logger,
    esp: str,
    error_detail: bool = True,
) -> httpx.Response:
    """Send one request and return the response, whatever its status.

    A timeout or network failure raises ``Transient`` named by ``where`` (``"POST /path"``), with the
    exception's own text when ``error_detail``. Every response is logged at debug level as ``<esp> <where>``.
    """
    started = time.monotonic()
    try:
        response = http.request(method, url, content=content, headers=dict(headers))
    except httpx.TimeoutException as exc:
        raise Transient(f"{where}: timed out ({type(exc).__name__})") from None
    except httpx.TransportError as exc:
        detail = f": {exc}" if error_detail else ""
        raise Transient(f"{where}: {type(exc).__name__}{detail}") from None
    log.debug("%s %s -> %s in %.0f ms", esp, where, response.status_code, (time.monotonic() - started) * 1000)
    return response
