"""The HTTP side of espbridge: a Flask application factory and its blueprints."""

from __future__ import annotations

import secrets

from flask import Flask, current_app

from connector.runtime import Runtime
from connector.settings import Settings, load

#: Raw (possibly gzipped) body limit; the decoded body is checked against Segment's limits separately.
MAX_REQUEST_BYTES = 600 * 1024


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> Flask:
    """Build the app. ``settings`` defaults to the environment; tests pass their own (flaskr's pattern)."""
    settings = settings or (runtime.settings if runtime else load())
    app = Flask(__name__)
    secret = settings.secret_key.get_secret_value() if settings.secret_key else secrets.token_hex(32)
    app.config.update(SECRET_KEY=secret, MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES, JSON_SORT_KEYS=False)
    app.extensions["espbridge"] = runtime or Runtime(settings)

    from . import admin, admin_audit, admin_erasure, admin_rfm, consent_pages, errors, ingest, openapi, webhooks
    from .admin_segments import bp as segments_bp

    errors.init_app(app)
    app.register_blueprint(ingest.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(consent_pages.bp)
    app.register_blueprint(admin_erasure.bp)
    app.register_blueprint(admin_audit.bp)
    app.register_blueprint(admin_rfm.bp)
    app.register_blueprint(segments_bp)
    return app


def get_runtime() -> Runtime:
    runtime: Runtime = current_app.extensions["espbridge"]
    return runtime
