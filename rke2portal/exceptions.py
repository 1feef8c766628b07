"""How the API renders errors: one shape for every failure.

    {"code": "validation_error", "message": "Invalid input: name, nodes[1].internal_ip.",
     "errors": {"name": ["..."], "nodes[1].internal_ip": ["..."]}, "extra": {}}

``code`` is stable for programs (``validation_error``, ``parse_error``, ``not_authenticated``,
``authentication_failed``, ``permission_denied``, ``not_found``, ``method_not_allowed``, ``unsupported_media_type``,
``job_conflict``, ``invalid_state``, ...); ``message`` is for people. ``errors`` maps field paths to messages: nested
fields are written ``parent.child`` and list items ``list[index]`` (``nodes[2].hostname``), the way the services
name them, and errors about the request as a whole are under ``non_field_errors``. ``extra`` carries details of
business errors, such as the id of the job that conflicts.

Business errors (:class:`clusters.exceptions.ApplicationError`) use their own status (409 for conflicts and
invalid states); Django ``ValidationError`` raised by services and models becomes a 400 like a serializer error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import NON_FIELD_ERRORS, PermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from clusters.exceptions import ApplicationError

__all__ = [
    "NON_FIELD_KEY",
    "api_exception_handler",
    "api_not_found",
    "api_server_error",
    "error_body",
    "flatten_errors",
]

NON_FIELD_KEY = "non_field_errors"
API_PREFIX = "/api/"


def error_body(
    code: str, message: str, errors: Mapping[str, list[str]] | None = None, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    return {"code": code, "message": message, "errors": dict(errors or {}), "extra": dict(extra or {})}


def flatten_errors(detail: Any, path: str = "") -> dict[str, list[str]]:
    """Serializer or model errors as a flat mapping of field paths to messages."""
    flat: dict[str, list[str]] = {}
    _flatten(detail, path, flat)
    return flat


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    key = str(key)
    if key in (NON_FIELD_KEY, NON_FIELD_ERRORS):
        return path
    return f"{path}.{key}" if path else key


def _flatten(detail: Any, path: str, flat: dict[str, list[str]]) -> None:
    if isinstance(detail, Mapping):
        for key, value in detail.items():
            _flatten(value, _join(path, key), flat)
    elif isinstance(detail, (list, tuple)):
        for index, item in enumerate(detail):
            if isinstance(item, (Mapping, list, tuple)):
                # A list of per-item errors (a list serializer): valid items have empty entries.
                _flatten(item, _join(path, index), flat)
            else:
                flat.setdefault(path or NON_FIELD_KEY, []).append(str(item))
    elif detail not in (None, ""):
        flat.setdefault(path or NON_FIELD_KEY, []).append(str(detail))


def _django_errors(exc: DjangoValidationError) -> dict[str, list[str]]:
    if hasattr(exc, "error_dict"):
        return flatten_errors({field: list(messages) for field, messages in exc.message_dict.items()})
    return {NON_FIELD_KEY: list(exc.messages)}


def _validation_message(errors: Mapping[str, list[str]]) -> str:
    if not errors:
        return "Invalid input."
    if list(errors) == [NON_FIELD_KEY]:
        return errors[NON_FIELD_KEY][0]
    return f"Invalid input: {', '.join(errors)}."


def _code_of(exc: exceptions.APIException) -> str:
    detail = exc.detail
    code = getattr(detail, "code", None) if isinstance(detail, str) else None
    return str(code or exc.default_code)


def api_exception_handler(exc: Exception, context: Mapping[str, Any]) -> Response | None:
    """DRF exception handler (``REST_FRAMEWORK["EXCEPTION_HANDLER"]``) rendering every error in one shape."""
    if isinstance(exc, ApplicationError):
        set_rollback()
        return Response(error_body(exc.code, exc.message, extra=exc.extra), status=exc.http_status)
    if isinstance(exc, DjangoValidationError):
        set_rollback()
        errors = _django_errors(exc)
        body = error_body("validation_error", _validation_message(errors), errors)
        return Response(body, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    # DRF's own handler sets the headers (WWW-Authenticate, Retry-After) and rolls back the transaction.
    response = drf_exception_handler(exc, dict(context))
    if response is None or not isinstance(exc, exceptions.APIException):
        return response
    if isinstance(exc, exceptions.ValidationError):
        errors = flatten_errors(exc.detail)
        response.data = error_body("validation_error", _validation_message(errors), errors)
    else:
        message = str(exc.detail) if isinstance(exc.detail, str) else str(exc.default_detail)
        response.data = error_body(_code_of(exc), message)
    return response


def _wants_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIX)


def api_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """``handler404``: the API's error shape under /api/, Django's page elsewhere."""
    if _wants_api(request):
        return JsonResponse(error_body("not_found", "Not found."), status=404)
    return defaults.page_not_found(request, exception)  # type: ignore[arg-type]


def api_server_error(request: HttpRequest) -> HttpResponse:
    """``handler500``: the API's error shape under /api/, Django's page elsewhere. Never shows the exception."""
    if _wants_api(request):
        return JsonResponse(error_body("server_error", "Server error."), status=500)
    return defaults.server_error(request)
