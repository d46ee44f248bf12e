"""Admin authentication: ``Authorization: Bearer <token>`` and a role check on every admin endpoint."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

from flask import g
from flask import request as flask_request

from connector.store import Role
from connector.tenancy import Principal, authenticate_admin

from . import get_runtime
from .errors import error_response

F = TypeVar("F", bound=Callable[..., object])

ALL_ROLES = tuple(Role)


def requires(*roles: Role) -> Callable[[F], F]:
    """401 without a valid token, 403 when the user's role is not one of ``roles``."""

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: object, **kwargs: object) -> object:
            header = flask_request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            principal = None
            if scheme.lower() == "bearer" and token.strip():
                with get_runtime().db.reader() as session:
                    principal = authenticate_admin(session, token.strip())
            if principal is None:
                response = error_response(401, "a valid admin token is required (Authorization: Bearer …)")
                response.headers["WWW-Authenticate"] = 'Bearer realm="espbridge-admin"'
                return response
            if principal.role not in roles:
                allowed = ", ".join(role.value for role in roles)
                return error_response(403, f"role {principal.role.value!r} may not do this; needs one of: {allowed}")
            g.principal = principal
            return view(*args, **kwargs)

        wrapper.__dict__["required_roles"] = roles  # the OpenAPI document names them
        return wrapper  # type: ignore[return-value]

    return decorate


def current_principal() -> Principal:
    principal: Principal = g.principal
    return principal
