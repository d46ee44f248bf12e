"""Regenerate connector/sandbox/activecampaign_spec.json from the ActiveCampaign v3 mirror (ESP_NOTES.md §0).

    python scripts/extract_activecampaign_sandbox_spec.py \
        ../shared/specs/activecampaign/openapi/_original/activecampaign-v3.json

The mirror (api-evangelist/activecampaign, a readme.io export, OpenAPI 3.1) is third-party and partly wrong. The
extract keeps, per operation the sandbox emulates, the method, the path, the mirror's operationId and its request
schema with descriptions/examples dropped, and applies the documented corrections listed under ``overrides``:

- every request body must carry its wrapper object (``{"contact": {...}}``): the mirror leaves it optional, which
  would let ``{}`` through;
- ``POST /ecomOrders`` / ``PUT /ecomOrders/{id}``: ``orderProducts`` (and ``orderDiscounts``) are ARRAYS (the
  mirror says objects; the docs' examples send arrays), and a POST needs one of ``externalid`` (an order) or
  ``externalcheckoutid`` (a cart), the mirror requiring both; the docs say each is "only required if the other is
  not included", so both together are allowed: an order that completes that cart
  (https://developers.activecampaign.com/reference/create-order, quoted in ESP_NOTES.md §2.4); ``abandonedDate``
  is not required (carts only).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "connector" / "sandbox" / "activecampaign_spec.json"

#: sandbox operation name → (method, path under /api/3, wrapper key of the body or None)
OPERATIONS: dict[str, tuple[str, str, str | None]] = {
    "sync_contact": ("POST", "/contact/sync", "contact"),
    "create_list": ("POST", "/lists", "list"),
    "update_list_status": ("POST", "/contactLists", "contactList"),
    "create_tag": ("POST", "/tags", "tag"),
    "add_contact_tag": ("POST", "/contactTags", "contactTag"),
    "create_field": ("POST", "/fields", "field"),
    "create_field_rel": ("POST", "/fieldRels", "fieldRel"),
    "create_field_value": ("POST", "/fieldValues", "fieldValue"),
    "update_field_value": ("PUT", "/fieldValues/{id}", "fieldValue"),
    "bulk_import": ("POST", "/import/bulk_import", "contacts"),
    "create_event_name": ("POST", "/eventTrackingEvents", "eventTrackingEvent"),
    "set_event_tracking": ("PUT", "/eventTracking", "eventTracking"),
    "create_connection": ("POST", "/connections", "connection"),
    "create_ecom_customer": ("POST", "/ecomCustomers", "ecomCustomer"),
    "create_ecom_order": ("POST", "/ecomOrders", "ecomOrder"),
    "update_ecom_order": ("PUT", "/ecomOrders/{id}", "ecomOrder"),
    "create_webhook": ("POST", "/webhooks", "webhook"),
}
_DROP = {"description", "default", "examples", "example"}


def _strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: (_strip(v) if k != "properties" else {p: _strip(s) for p, s in v.items()})
            for k, v in node.items()
            if k not in _DROP
        }
    if isinstance(node, list):
        return [_strip(item) for item in node]
    return node


def _documented_order(schema: dict[str, Any], *, create: bool) -> dict[str, Any]:
    order = schema["properties"]["ecomOrder"]
    product = order["properties"]["orderProducts"]
    order["properties"]["orderProducts"] = {"type": "array", "items": product}
    if create:
        order["required"] = [
            name for name in order["required"] if name not in ("externalid", "externalcheckoutid", "abandonedDate")
        ]
        order["anyOf"] = [{"required": ["externalid"]}, {"required": ["externalcheckoutid"]}]
    discounts = order["properties"].get("orderDiscounts")
    if discounts is not None:
        order["properties"]["orderDiscounts"] = {"type": "array", "items": discounts}
    return schema


def main(source: str) -> None:
    document = json.loads(Path(source).read_text())
    operations: dict[str, Any] = {}
    for name, (method, path, wrapper) in OPERATIONS.items():
        op = document["paths"][path][method.lower()]
        schema = _strip(op["requestBody"]["content"]["application/json"]["schema"])
        if wrapper is not None:
            schema["required"] = sorted({*schema.get("required", []), wrapper})
        if path.startswith("/ecomOrders"):
            schema = _documented_order(schema, create=method == "POST")
        operations[name] = {
            "method": method,
            "path": f"/api/3{path}",
            "mirror_operation_id": op["operationId"],
            "request_schema": schema,
        }
    extract = {
        "source": {
            "mirror": "api-evangelist/activecampaign openapi/_original/activecampaign-v3.json",
            "commit": "6295cc550d2778aaccad866feb1dcc6b70c5c70c",
            "openapi": document["openapi"],
        },
        "overrides": [
            "every body requires its wrapper object (the mirror leaves it optional)",
            "ecomOrders: orderProducts and orderDiscounts are arrays; POST needs externalid or externalcheckoutid "
            "(the docs: each only required if the other is not included; ESP_NOTES.md 2.4); abandonedDate optional",
        ],
        "operations": operations,
    }
    OUT.write_text(json.dumps(extract, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT} ({len(operations)} operations)")


if __name__ == "__main__":
    main(
        sys.argv[1] if len(sys.argv) > 1 else "../shared/specs/activecampaign/openapi/_original/activecampaign-v3.json"
    )
