"""Extract what the ESP sandbox needs from Klaviyo's official OpenAPI spec into ``connector/sandbox/``.

The full spec (klaviyo/openapi ``stable.json``, ~3 MB) lives outside the repository, in ``../shared/specs/klaviyo``.
The sandbox ships a trimmed extract: for each emulated operation its method, path, ``x-klaviyo-ratelimit``, request
schema and 2xx response schemas, plus every component schema those reference (transitively).

Usage: ``python scripts/extract_klaviyo_sandbox_spec.py [path/to/stable.json]`` rewrites
``connector/sandbox/klaviyo_spec.json``. Re-run it when the spec moves, and review the diff.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = ROOT.parent / "shared" / "specs" / "klaviyo" / "stable.json"
OUTPUT = ROOT / "connector" / "sandbox" / "klaviyo_spec.json"
MEDIA_TYPE = "application/vnd.api+json"
PREFIX = "#/components/schemas/"

#: Every operation the sandbox emulates (connector/sandbox/klaviyo.py ROUTES).
OPERATIONS = [
    "create_or_update_profile",
    "create_profile",
    "update_profile",
    "get_profile",
    "bulk_import_profiles",
    "get_bulk_import_profiles_job",
    "get_errors_for_bulk_import_profiles_job",
    "create_event",
    "bulk_create_events",
    "get_events",
    "get_metrics",
    "bulk_subscribe_profiles",
    "bulk_unsubscribe_profiles",
    "bulk_suppress_profiles",
    "bulk_unsuppress_profiles",
    "create_list",
    "add_profiles_to_list",
    "remove_profiles_from_list",
    "request_profile_deletion",
    "create_webhook",
    "get_webhooks",
]


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(PREFIX):
            found.add(ref[len(PREFIX) :])
        for value in node.values():
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


def extract(spec: dict[str, Any]) -> dict[str, Any]:
    schemas = spec["components"]["schemas"]
    operations: dict[str, Any] = {}
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if not isinstance(op, dict) or op.get("operationId") not in OPERATIONS:
                continue
            request = op.get("requestBody", {}).get("content", {}).get(MEDIA_TYPE, {}).get("schema")
            responses = {
                code: response.get("content", {}).get(MEDIA_TYPE, {}).get("schema")
                for code, response in op["responses"].items()
                if code.startswith("2")
            }
            operations[op["operationId"]] = {
                "method": method.upper(),
                "path": path,
                "ratelimit": op.get("x-klaviyo-ratelimit", {}),
                "request_schema": request,
                "responses": responses,
            }
    missing = set(OPERATIONS) - set(operations)
    if missing:
        raise SystemExit(f"operations not in the spec: {sorted(missing)}")
    needed: set[str] = set()
    todo = _refs(operations)
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo |= _refs(schemas[name]) - needed
    return {
        "source": {
            "repo": "klaviyo/openapi",
            "file": "openapi/stable.json",
            "revision": spec["info"]["version"],
            "openapi": spec["openapi"],
        },
        "operations": dict(sorted(operations.items())),
        "components": {"schemas": {name: schemas[name] for name in sorted(needed)}},
    }


def main(argv: list[str]) -> None:
    spec_path = Path(argv[1]) if len(argv) > 1 else DEFAULT_SPEC
    extracted = extract(json.loads(spec_path.read_text()))
    source_txt = spec_path.parent / "SOURCE.txt"
    if source_txt.exists():
        extracted["source"]["provenance"] = source_txt.read_text().strip()
    OUTPUT.write_text(json.dumps(extracted, indent=1) + "\n")
    print(f"{OUTPUT.relative_to(ROOT)}: {len(extracted['components']['schemas'])} schemas", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv)
