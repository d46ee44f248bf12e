"""``espbridge sandbox`` as a real process serving both ESPs: the ActiveCampaign part answers with the credentials
given on the command line (``--ac-api-token``, ``--ac-actid``, ``--ac-event-key``) next to the Klaviyo part, and
activecampaign-python (an independent, requests-based client) talks to it over HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from .sandbox_support import running_sandbox

pytestmark = pytest.mark.slow


def test_the_sandbox_process_serves_activecampaign_next_to_klaviyo(tmp_path: Path) -> None:
    from activecampaign.client import Client as AcClient  # untyped (no py.typed)

    with running_sandbox(
        tmp_path, api_key="pk_e2e", ac_api_token="ac_e2e", ac_actid="42", ac_event_key="ek_e2e"
    ) as process:
        ac = AcClient(process.url, "ac_e2e")
        contact = ac.contacts.create_or_update_contact({"contact": {"email": "a@example.com"}})["contact"]
        with httpx.Client(base_url=process.url, timeout=10) as http:
            refused = http.get("/api/3/lists", headers={"Api-Token": "ac_sandbox_token"})  # the default: not given
            assert refused.status_code == 403 and refused.headers["X-Espbridge-Sandbox"] == "activecampaign"
            assert http.put(
                "/api/3/eventTracking", json={"eventTracking": {"enabled": True}}, headers={"Api-Token": "ac_e2e"}
            ).is_success
            body = {"eventTrackingEvent": {"name": "viewed"}}
            assert http.post("/api/3/eventTrackingEvents", json=body, headers={"Api-Token": "ac_e2e"}).is_success
            form = {"actid": "42", "key": "ek_e2e", "event": "viewed", "visit": '{"email": "a@example.com"}'}
            assert http.post("/event", data=form).json() == {"success": 1, "message": "Event spawned"}
            assert http.post("/event", data={**form, "actid": "1000000"}).json()["success"] == 0
            klaviyo = http.get("/api/profiles/none", headers={"Authorization": "Klaviyo-API-Key pk_e2e"})
            assert klaviyo.headers["X-Espbridge-Sandbox"] == "klaviyo"
            state = http.get("/_sandbox/activecampaign/state").json()
            assert [c["id"] for c in state["contacts"]] == [contact["id"]]
            assert [e["contact"] for e in state["trackedEvents"]] == [contact["id"]]
            assert http.get("/_sandbox/").json()["emulates"] == ["klaviyo", "activecampaign"]
        assert process.stop() == 0, process.failure("did not exit cleanly on SIGTERM")
    log = process.log_path.read_text()
    assert "NOT Klaviyo" in log and "NOT ActiveCampaign" in log
