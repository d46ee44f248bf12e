"""Extract the request schemas of the Klaviyo operations espbridge calls from the official OpenAPI spec.

The full spec (klaviyo/openapi ``stable.json``, ~3 MB) lives outside the repository, in ``../shared/specs/klaviyo``;
tests validate the adapter's request bodies against this trimmed extract instead, so they run in any checkout.

Usage: ``python scripts/extract_klaviyo_schemas.py [path/to/stable.json]`` rewrites
``tests/contract/klaviyo_schemas.json``. Re-run it when the adapter's ``REVISION`` moves, and review the diff.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = ROOT.parent / "shared" / "specs" / "klaviyo" / "stable.json"
OUTPUT = ROOT / "tests" / "contract" / "klaviyo_schemas.json"

#: Every operation the Klaviyo adapter sends (connector/esp/klaviyo.py).
OPERATIONS = [
    "create_or_update_profile",
    "bulk_import_profiles",
    "get_bulk_import_profiles_job",
    "get_errors_for_bulk_import_profiles_job",
    "create_event",
    "bulk_create_events",
    "bulk_subscribe_profiles",
    "bulk_unsubscribe_profiles",
    "bulk_suppress_profiles",
    "bulk_unsuppress_profiles",
    "create_list",
    "add_profiles_to_list",
    "remove_profiles_from_list",
    "request_profile_deletion",
]

PREFIX = "#/components/schemas/"


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
            if isinstance(op, dict) and op.get("operationId") in OPERATIONS:
                content = op.get("requestBody", {}).get("content", {})
                schema = content.get("application/vnd.api+json", {}).get("schema")
                operations[op["operationId"]] = {
                    "method": method.upper(),
                    "path": path,
                    "request_schema": schema,
                    "success": sorted(code for code in op["responses"] if code.startswith("2")),
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
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(extracted, indent=1, sort_keys=False) + "\n")
    print(f"{OUTPUT.relative_to(ROOT)}: {len(extracted['components']['schemas'])} schemas", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv)
