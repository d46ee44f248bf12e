"""``espbridge sandbox`` as a real process, driven over HTTP by Klaviyo's official SDK (``klaviyo-api``, pointed at
the sandbox with its ``test_host`` argument): an independent client proving the sandbox speaks Klaviyo's protocol.
The SDK deserialises every 2xx body into its pydantic response models, so a wrong shape fails here too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .processes import HOST, ServiceProcess
from .sandbox_support import running_sandbox

pytestmark = pytest.mark.slow


@pytest.fixture
def sandbox_process(tmp_path: Path) -> Iterator[ServiceProcess]:
    with running_sandbox(tmp_path, api_key="pk_e2e") as process:
        yield process
        assert process.stop() == 0, process.failure("did not exit cleanly on SIGTERM")


def test_official_klaviyo_sdk_against_the_sandbox_process(sandbox_process: ServiceProcess) -> None:
    from klaviyo_api import KlaviyoAPI
    from openapi_client.api.events_api import EventsApi
    from openapi_client.api.lists_api import ListsApi
    from openapi_client.api.profiles_api import ProfilesApi
    from openapi_client.exceptions import ApiException

    klaviyo = KlaviyoAPI("pk_e2e", max_retries=1, test_host=sandbox_process.url)
    profiles: ProfilesApi = klaviyo.Profiles
    events: EventsApi = klaviyo.Events
    lists: ListsApi = klaviyo.Lists

    # Profile import: created, then the same email updates the same profile
    created = profiles.create_or_update_profile(
        {"data": {"type": "profile", "attributes": {"email": "sarah@example.com", "external_id": "cust-1"}}}
    )
    again = profiles.create_or_update_profile(
        {"data": {"type": "profile", "attributes": {"email": "sarah@example.com", "first_name": "Sarah"}}}
    )
    assert again.data.id == created.data.id
    assert again.data.attributes.first_name == "Sarah"

    # Create event, twice with one unique_id: accepted twice, recorded once
    event = {
        "data": {
            "type": "event",
            "attributes": {
                "properties": {"sku": "SKU-1"},
                "unique_id": "order-1001",
                "metric": {"data": {"type": "metric", "attributes": {"name": "Placed Order"}}},
                "profile": {"data": {"type": "profile", "attributes": {"email": "sarah@example.com"}}},
            },
        }
    }
    events.create_event(event)
    events.create_event(event)

    # List create, add the profile; bulk subscribe into the list
    new_list = lists.create_list({"data": {"type": "list", "attributes": {"name": "Synced: VIP"}}})
    list_id = new_list.data.id
    lists.add_profiles_to_list(list_id, {"data": [{"type": "profile", "id": created.data.id}]})
    profiles.bulk_subscribe_profiles(
        {
            "data": {
                "type": "profile-subscription-bulk-create-job",
                "attributes": {
                    "profiles": {
                        "data": [
                            {
                                "type": "profile",
                                "attributes": {
                                    "email": "ben@example.com",
                                    "subscriptions": {"email": {"marketing": {"consent": "SUBSCRIBED"}}},
                                },
                            }
                        ]
                    }
                },
                "relationships": {"list": {"data": {"type": "list", "id": list_id}}},
            }
        }
    )

    # Bulk import job and its status
    job = profiles.bulk_import_profiles(
        {
            "data": {
                "type": "profile-bulk-import-job",
                "attributes": {
                    "profiles": {
                        "data": [{"type": "profile", "attributes": {"email": f"p{i}@example.com"}} for i in range(3)]
                    }
                },
            }
        }
    )
    status = profiles.get_bulk_import_profiles_job(job.data.id)
    assert (status.data.attributes.status, status.data.attributes.completed_count) == ("complete", 3)

    # A wrong key: the SDK raises ApiException carrying Klaviyo's error body
    with pytest.raises(ApiException) as refused:
        KlaviyoAPI("pk_wrong", max_retries=1, test_host=sandbox_process.url).Profiles.get_profile(created.data.id)
    assert refused.value.status == 401

    with httpx.Client(base_url=sandbox_process.url, timeout=5.0) as http:
        state = http.get("/_sandbox/state").json()
        sdk_requests = http.get("/_sandbox/requests", params={"operation": "create_event"}).json()["requests"]
    assert len(state["events"]) == 1 and state["events_deduplicated"] == 1
    ben = next(p for p in state["profiles"] if p["attributes"]["email"] == "ben@example.com")
    assert state["subscriptions"][ben["id"]] == {"email": "SUBSCRIBED"}
    assert sorted(state["lists"][list_id]["members"]) == sorted([created.data.id, ben["id"]])
    assert len(state["profiles"]) == 5
    # the SDK sends its own revision (newer than the spec's) and JSON:API media type; the sandbox accepted both
    assert sdk_requests[0]["headers"]["Revision"] == KlaviyoAPI._REVISION
    assert "Authorization" not in sdk_requests[0]["headers"]
    assert HOST in sandbox_process.url
    assert "NOT Klaviyo" in sandbox_process.log_path.read_text()
