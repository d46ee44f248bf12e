"""Both ESPs in one sandbox process: a composite WSGI app in front of the Klaviyo and ActiveCampaign parts.

THIS IS A SANDBOX, NOT KLAVIYO OR ACTIVECAMPAIGN. ``/api/3/…``, ``/event`` (trackcmp.net's event endpoint) and
``/_sandbox/activecampaign/…`` go to :class:`ActiveCampaignSandbox`; everything else (Klaviyo's ``/api/…``, its
``/_sandbox/…`` admin endpoints) to :class:`KlaviyoSandbox`. The two share nothing: each keeps its own state, lock,
rate-limit windows and faults. ``GET /_sandbox/`` answers the Klaviyo part's index with an ``activecampaign`` entry
added, so one look tells what the process emulates.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.wrappers import Request, Response

from .activecampaign import ADMIN_PREFIX, ActiveCampaignSandbox
from .klaviyo import SANDBOX_HEADER, KlaviyoSandbox

__all__ = ["Sandbox", "routes_to_activecampaign"]


def routes_to_activecampaign(path: str) -> bool:
    """Whether a request path belongs to the ActiveCampaign part."""
    return path in ("/api/3", "/event", ADMIN_PREFIX) or path.startswith(("/api/3/", ADMIN_PREFIX + "/"))


class Sandbox:
    """The WSGI app ``espbridge sandbox`` serves: ``klaviyo`` and ``activecampaign`` behind one port."""

    def __init__(self, klaviyo: KlaviyoSandbox, activecampaign: ActiveCampaignSandbox) -> None:
        self.klaviyo = klaviyo
        self.activecampaign = activecampaign

    def reset(self) -> None:
        self.klaviyo.reset()
        self.activecampaign.reset()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        if routes_to_activecampaign(path):
            return self.activecampaign(environ, start_response)
        if path.rstrip("/") == "/_sandbox" and environ.get("REQUEST_METHOD") == "GET":
            return self._index(environ, start_response)
        return self.klaviyo(environ, start_response)

    def _index(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        index: dict[str, Any] = json.loads(self.klaviyo.dispatch(Request(environ)).get_data())
        index["notice"] = (
            "This is the espbridge ESP sandbox, NOT Klaviyo and NOT ActiveCampaign. "
            "Nothing sent here reaches a real account."
        )
        index["emulates"] = ["klaviyo", "activecampaign"]
        index["activecampaign"] = self.activecampaign.index()
        response = Response(json.dumps(index), content_type="application/json")
        response.headers[SANDBOX_HEADER[0]] = SANDBOX_HEADER[1]
        return response(environ, start_response)
