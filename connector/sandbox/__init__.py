"""The ESP sandbox: local servers that emulate the ESP APIs espbridge calls. A SANDBOX, never the real ESP.

``espbridge sandbox`` serves :class:`KlaviyoSandbox` (connector/sandbox/klaviyo.py): Klaviyo's paths under
``/api/``, its ``Klaviyo-API-Key`` auth and ``revision`` header, JSON:API bodies validated against the official
OpenAPI spec, the documented per-operation rate limits (burst, steady, daily; 429 + ``Retry-After``), bulk job
semantics with per-record errors, fault injection and a request log, all in memory. Every response carries
``X-Espbridge-Sandbox: klaviyo``. Written on werkzeug, not Flask: connector/ never imports Flask or web/.

Not yet emulated: ActiveCampaign; emitting signed webhooks back to espbridge (the hook is
``KlaviyoSandbox.webhook_subscribers``); GET list endpoints (profiles, events, metrics); OAuth bearer tokens;
key scopes.
"""

from .klaviyo import DEFAULT_API_KEY, SANDBOX_HEADER, Faults, KlaviyoSandbox
from .server import SandboxServer

__all__ = ["DEFAULT_API_KEY", "SANDBOX_HEADER", "Faults", "KlaviyoSandbox", "SandboxServer"]
