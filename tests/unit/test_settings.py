"""Settings come from ESPBRIDGE_* variables only, with the documented defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from connector.settings import Settings
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
