"""The ESP sandbox: local servers that emulate the ESP APIs espbridge calls. A SANDBOX, never the real ESP.

``espbridge sandbox`` serves :class:`KlaviyoSandbox` (connector/sandbox/klaviyo.py): Klaviyo's paths under
``/api/``, its ``Klaviyo-API-Key`` auth and ``revision`` header, JSON:API bodies validated against the official
OpenAPI spec, the documented per-operation rate limits (burst, steady, daily; 429 + ``Retry-After``), bulk job
semantics with per-record errors, fault injection and a request log, all in memory. Every response carries
``X-Espbridge-Sandbox: klaviyo``. Written on werkzeug, not Flask: connector/ never imports Flask or web/.
Engagement (connector/sandbox/klaviyo_webhooks.py): ``GET /api/metrics``, ``GET /api/events``, and email events
recorded with ``POST /_sandbox/engagement`` delivered to the registered webhooks, signed as Klaviyo signs them.

The ActiveCampaign part, :class:`ActiveCampaignSandbox` (connector/sandbox/activecampaign.py): AC's v3 paths under
``/api/3/``, ``Api-Token`` auth, bodies validated against the v3 reference mirror with the documented corrections,
the account's 5 req/s (and the bulk importer's per-minute limits), bulk import, trackcmp events at ``/event``,
Deep Data, and form-encoded webhook deliveries (activecampaign_webhooks.py); admin under
``/_sandbox/activecampaign/``; every response carries ``X-Espbridge-Sandbox: activecampaign``. :class:`Sandbox`
(app.py) serves both parts on one port.

Not yet emulated: GET list endpoints for profiles; OAuth bearer tokens; key scopes.
"""

from .activecampaign import (
    AC_SANDBOX_HEADER,
    DEFAULT_ACTID,
    DEFAULT_API_TOKEN,
    DEFAULT_EVENT_KEY,
    AcFaults,
    AcReject,
    ActiveCampaignSandbox,
)
from .app import Sandbox
from .klaviyo import DEFAULT_API_KEY, SANDBOX_HEADER, Faults, KlaviyoSandbox
from .server import SandboxServer

__all__ = [
    "AC_SANDBOX_HEADER",
    "DEFAULT_ACTID",
    "DEFAULT_API_KEY",
    "DEFAULT_API_TOKEN",
    "DEFAULT_EVENT_KEY",
    "SANDBOX_HEADER",
    "AcFaults",
    "AcReject",
    "ActiveCampaignSandbox",
    "Faults",
    "KlaviyoSandbox",
    "Sandbox",
    "SandboxServer",
]
