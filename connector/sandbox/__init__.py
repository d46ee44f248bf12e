"""The ESP sandbox: local servers that emulate the ESP APIs espbridge calls. A SANDBOX, never the real ESP.

``espbridge sandbox`` serves :class:`KlaviyoSandbox` (connector/sandbox/klaviyo.py): Klaviyo's paths under
``/api/``, its ``Klaviyo-API-Key`` auth and ``revision`` header, JSON:API bodies validated against the official
OpenAPI spec, the documented per-operation rate limits (burst, steady, daily; 429 + ``Retry-After``), bulk job
semantics with per-record errors, fault injection and a request log, all in memory. Every response carries
``X-Espbridge-Sandbox: klaviyo``. Written on werkzeug, not Flask: connector/ never imports Flask or web/.
Engagement (connector/sandbox/klaviyo_webhooks.py): ``GET /api/metrics``, ``GET /api/events``, and email events
recorded with ``POST /_sandbox/engagement`` delivered to the registered webhooks, signed as Klaviyo signs them.

Not yet emulated: ActiveCampaign; GET list endpoints for profiles; OAuth bearer tokens; key scopes.
"""

from .klaviyo import DEFAULT_API_KEY, SANDBOX_HEADER, Faults, KlaviyoSandbox
from .server import SandboxServer

__all__ = ["DEFAULT_API_KEY", "SANDBOX_HEADER", "Faults", "KlaviyoSandbox", "SandboxServer"]
