"""Settings come from ESPBRIDGE_* variables only, with the documented defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from connector import lifecycle, rfm
from connector.settings import ConfigurationError, Settings, load
from web import MAX_REQUEST_BYTES, create_app


def test_defaults_are_the_embedded_setup() -> None:
    settings = Settings()
    assert settings.database_url == "sqlite:///./espbridge.db"
    assert settings.redis_url is None and settings.embedded_broker
    assert settings.retry_max_age == 24 * 3600


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESPBRIDGE_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("ESPBRIDGE_WEB_WORKERS", "3")
    settings = Settings()
    assert settings.redis_url == "redis://127.0.0.1:1/0" and not settings.embedded_broker
    assert settings.web_workers == 3


def test_bad_values_are_refused_with_the_field_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESPBRIDGE_PORT", "99999")
    with pytest.raises(ValidationError, match="port"):
        Settings()


def test_rfm_and_lifecycle_thresholds_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert rfm.config_from(Settings()) == rfm.RfmConfig()
    assert lifecycle.config_from(Settings()) == lifecycle.LifecycleConfig()
    for name, value in {
        "RFM_WINDOW_DAYS": "180",
        "RFM_FREQUENCY_THRESHOLDS": "1, 2,4,8",
        "RFM_MIN_SCORED": "50",
        "RFM_FIXED_RECENCY_DAYS": "200,100,50,10",
        "RFM_FIXED_MONETARY_CENTS": "0,1,2,3",
        "RFM_DRIFT_ALERT_PCT": "2.5",
        "LIFECYCLE_NEW_DAYS": "7",
        "LIFECYCLE_AT_RISK_DAYS": "60",
        "LIFECYCLE_CHURNED_DAYS": "61",
        "LIFECYCLE_ENGAGED_DAYS": "0",
    }.items():
        monkeypatch.setenv(f"ESPBRIDGE_{name}", value)
    settings = load()
    assert rfm.config_from(settings) == rfm.RfmConfig(
        window_days=180,
        frequency_thresholds=(1, 2, 4, 8),
        min_scored_for_percentiles=50,
        fixed_recency_days=(200, 100, 50, 10),
        fixed_monetary_cents=(0, 1, 2, 3),
        drift_alert_pct=2.5,
    )
    assert lifecycle.config_from(settings) == lifecycle.LifecycleConfig(
        new_days=7, at_risk_days=60, churned_days=61, engaged_days=0
    )


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"RFM_FREQUENCY_THRESHOLDS": "3,2,5,10"}, "ESPBRIDGE_RFM_FREQUENCY_THRESHOLDS must be four ascending"),
        ({"RFM_FREQUENCY_THRESHOLDS": "2,2,5,10"}, "ESPBRIDGE_RFM_FREQUENCY_THRESHOLDS must be four ascending"),
        ({"RFM_FREQUENCY_THRESHOLDS": "2,3,5"}, "ESPBRIDGE_RFM_FREQUENCY_THRESHOLDS must be four comma-separated"),
        ({"RFM_FREQUENCY_THRESHOLDS": "[2,3,5,10]"}, "ESPBRIDGE_RFM_FREQUENCY_THRESHOLDS must be four comma-sep"),
        ({"RFM_FIXED_RECENCY_DAYS": "30,90,180,365"}, "ESPBRIDGE_RFM_FIXED_RECENCY_DAYS must be four descending"),
        ({"RFM_FIXED_MONETARY_CENTS": "-1,1,2,3"}, "ESPBRIDGE_RFM_FIXED_MONETARY_CENTS must be four ascending"),
        ({"RFM_WINDOW_DAYS": "0"}, "ESPBRIDGE_RFM_WINDOW_DAYS: Input should be greater than or equal to 1"),
        ({"RFM_MIN_SCORED": "many"}, "ESPBRIDGE_RFM_MIN_SCORED: Input should be a valid integer"),
        ({"RFM_DRIFT_ALERT_PCT": "101"}, "ESPBRIDGE_RFM_DRIFT_ALERT_PCT: Input should be less than or equal to 100"),
        ({"LIFECYCLE_ENGAGED_DAYS": "-1"}, "ESPBRIDGE_LIFECYCLE_ENGAGED_DAYS: Input should be greater"),
        (
            {"LIFECYCLE_CHURNED_DAYS": "45"},
            "ESPBRIDGE_LIFECYCLE_CHURNED_DAYS (45) must exceed ESPBRIDGE_LIFECYCLE_AT_RISK_DAYS (45)",
        ),
    ],
)
def test_bad_thresholds_are_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], message: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(f"ESPBRIDGE_{name}", value)
    with pytest.raises(ConfigurationError) as caught:
        load()
    assert str(caught.value).startswith("invalid configuration: ") and message in str(caught.value)


def test_a_command_stops_at_startup_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from web.cli import main

    monkeypatch.setenv("ESPBRIDGE_LIFECYCLE_AT_RISK_DAYS", "120")
    result = CliRunner().invoke(main, ["rfm", "runs"])
    assert result.exit_code == 1
    assert "Error: invalid configuration: ESPBRIDGE_LIFECYCLE_CHURNED_DAYS (90) must exceed" in result.output


def test_secret_key_is_never_shown() -> None:
    settings = Settings(secret_key="hunter2-very-secret")
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    documented = set(re.findall(r"`(ESPBRIDGE_[A-Z_]+)`", readme))
    expected = {f"ESPBRIDGE_{name.upper()}" for name in Settings.model_fields}
    assert documented == expected


def test_app_factory_takes_settings(tmp_path: Path) -> None:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path}/x.db", secret_key="s3"))
    assert app.config["SECRET_KEY"] == "s3"
    assert app.config["MAX_CONTENT_LENGTH"] == MAX_REQUEST_BYTES
    assert app.test_client().get("/healthz").json == {"status": "ok"}
    app.extensions["espbridge"].close()
