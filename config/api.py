"""API plumbing shared by every app: the error shape (and its OpenAPI
description), the 404 of a path that names nothing, reading a request's body,
filtering a list by its query (and by ids)."""

from __future__ import annotations

from datetime import UTC

import django_filters
from django import forms
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import JsonResponse
from django.views import defaults
from django_filters.fields import IsoDateTimeField
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import exception_handler as drf_exception_handler

from config.errors import DomainError
from config.parsers import too_large_message, too_many_fields_message


def exception_handler(exc, context):
    """Answers every API error as JSON `{"detail": ..., ...}` a person can act on;
    domain errors from services become 400 (or their own status)."""
    if isinstance(exc, DomainError):
        return Response({"detail": exc.message, **exc.extra}, status=exc.status)
    if isinstance(exc, RequestDataTooBig):  # DRF read request.body, which Django caps (else a bare 400)
        return Response({"detail": too_large_message()}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if isinstance(exc, (TooManyFieldsSent, TooManyFilesSent)):  # a form body: Django's 400 would be an HTML page
        return Response({"detail": too_many_fields_message()}, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(exc.message_dict if hasattr(exc, "error_dict") else exc.messages)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, (list, dict)) and "detail" not in response.data:
        response.data = {"detail": "The request has invalid fields.", "errors": response.data}
    if response is None:
        return None
    if response.status_code == status.HTTP_404_NOT_FOUND:
        response.data = {"detail": "Not found."}
    return response


def not_found(request, exception=None):
    """The console's 404 for a path no URL matches (config.urls' handler404). Under /api/ it is the API's
    own answer, `{"detail": "Not found."}` in JSON: an id with a dot in it or a misspelt list name must not
    get an HTML page from a JSON API. Pages keep Django's."""
    if request.path_info.startswith("/api/"):
        return JsonResponse({"detail": "Not found."}, status=404)
    return defaults.page_not_found(request, exception)


def validated(serializer_class, request, **kwargs):
    """Returns `serializer_class` bound to the request's body and validated; raises
    ValidationError (a 400 naming the fields) when the body is invalid."""
    serializer = serializer_class(data=request.data, **kwargs)
    serializer.is_valid(raise_exception=True)
    return serializer


class StrictFilterBackend(DjangoFilterBackend):
    """Filters a list by its view's filterset (django-filter). A query parameter
    that neither the filterset, pagination nor format selection knows answers
    400 naming it: a misspelt filter silently ignored would answer everything.
    Views without a filterset are left as they are."""

    def filter_queryset(self, request, queryset, view):
        filterset_class = self.get_filterset_class(view, queryset)
        if filterset_class is not None:
            known = {*filterset_class.base_filters, *_paging_parameters(view), api_settings.URL_FORMAT_OVERRIDE}
            if unknown := sorted(set(request.query_params) - known):
                names = ", ".join(f"“{name}”" for name in unknown)
                raise exceptions.ParseError(
                    f"Unknown query parameter {names}; this list takes {', '.join(sorted(known))}."
                )
        return super().filter_queryset(request, queryset, view)


@extend_schema_field(OpenApiTypes.INT64)
class IdFilter(django_filters.NumberFilter):
    """Narrows a list by a row's id (a foreign key, a target's id): a whole number a 64-bit column can hold,
    else a 400 naming the parameter. NumberFilter's own field takes any decimal, and SQLite cannot compare
    1e+35 with an integer column (OverflowError: a 500)."""

    field_class = forms.IntegerField

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("min_value", -(2**63))
        kwargs.setdefault("max_value", 2**63 - 1)
        super().__init__(*args, **kwargs)


class UtcDateTimeField(IsoDateTimeField):
    """An ISO 8601 date and time, in UTC. PostgreSQL refuses a UTC offset past ±15:59, which ISO 8601 and
    Python allow (a 500 for "2026-01-01T00:00+18:00"), and a date near the first or last year may not
    move to UTC at all: both are a 400 naming the parameter."""

    def to_python(self, value):
        value = super().to_python(value)
        if value is None:
            return None
        try:
            return value.astimezone(UTC)
        except OverflowError:
            raise forms.ValidationError("This date and time is out of range.", code="overflow") from None


class DateTimeFilter(django_filters.IsoDateTimeFilter):
    """Narrows a list by a date and time (ISO 8601), compared in UTC (UtcDateTimeField)."""

    field_class = UtcDateTimeField


class SlugLookupField(serializers.SlugRelatedField):
    """A related object named in a body by a text field of it (a workspace's slug, a node's name). A NUL
    character in the name is refused here, not sent to the database: PostgreSQL cannot take one in a text
    value, and DRF's own field lets its DataError through (a 500)."""

    def to_internal_value(self, data):
        if isinstance(data, str) and "\x00" in data:
            self.fail("invalid")
        return super().to_internal_value(data)


def _paging_parameters(view) -> list[str]:
    """The query parameters the view's paginator reads (page, cursor, limit, offset, page size)."""
    paginator = getattr(view, "paginator", None)
    if paginator is None:
        return []
    return [value for name in dir(paginator) if name.endswith("_query_param") and (value := getattr(paginator, name))]


ERROR_SCHEMA = {
    "type": "object",
    "description": "Every error the API answers (4xx): what is wrong, in words a person can act on.",
    "properties": {
        "detail": {"type": "string", "description": "What is wrong and, where it helps, what to do."},
        "errors": {
            "type": "object",
            "additionalProperties": {"$ref": "#/components/schemas/FieldErrors"},
            "description": "Only when fields of the body or the query are invalid: each field's problems.",
        },
    },
    "required": ["detail"],
}
# A field's problems: its messages; for a list or an object, the problems of each item or field that has
# any, by position or name (DRF's own shape, e.g. {"adapters": {"0": {"adapter": ["A valid integer ..."]}}}).
FIELD_ERRORS_SCHEMA = {
    "anyOf": [
        {"type": "array", "items": {"type": "string"}},
        {"type": "array", "items": {"$ref": "#/components/schemas/FieldErrors"}},
        {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/FieldErrors"}},
    ],
}
RETRY_AFTER = {
    "Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait before the next request."}
}

ERROR_ANSWERS = {
    "400": "The request is invalid: `detail` says why and `errors`, when fields are at fault, names each. "
    "An unknown query parameter is a 400 too, and so is a change the object's state or a rule refuses.",
    "401": "No valid credentials: sign in, or send a personal API token as `Authorization: Bearer pbt_…`.",
    "403": "Signed in, but not allowed: viewers may not change anything in a workspace, and a token may "
    "do only what its scope allows.",
    "404": "No such object, or it belongs to a workspace the caller is not a member of: the answer is the same. "
    "On a list, a page past the last (or not a number).",
    "406": "The `Accept` header names no type the API answers: it answers `application/json`.",
    "409": "The object's state does not allow it now; `detail` says what to do first.",
    "413": "The request body is over the API's limit (PLUGBOARD_MAX_BODY_BYTES).",
    "415": "The body's `Content-Type` is none the API reads: send `application/json`.",
    "429": "Too many requests from this address or with these credentials: wait as `Retry-After` says.",
}
WRITES = ("post", "put", "patch", "delete")


def document_errors(result, generator, request, public):
    """drf-spectacular postprocessing hook: adds the error shape (`Error`) and the 4xx answers each
    operation can give, as DRF and the console's middleware really answer them:

    - 401 everywhere a credential is needed;
    - 400 where a body or query parameters (other than `page`) are read, and on writes (a service refuses
      a change with a DomainError, 400 unless it says otherwise);
    - 403 on writes (a viewer, or a token without the scope);
    - 404 where a path names an object, a body names a workspace, or a list takes a `page`;
    - 406 everywhere (content negotiation answers only JSON);
    - 413 on writes (config.middleware.RequestBodyLimit caps every body), 415 where a body is read;
    - 429 everywhere (config.middleware.ApiRateLimitMiddleware counts every request, with Retry-After);
    - 409 only where a view declares it.

    Every 4xx, declared or added, answers `Error`."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"], schemas["FieldErrors"] = ERROR_SCHEMA, FIELD_ERRORS_SCHEMA
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            answers = operation.setdefault("responses", {})
            codes = {"406", "429"}
            if {} not in operation.get("security", []):  # {} would mean "no credentials needed"
                codes.add("401")
            queries = {p["name"] for p in operation.get("parameters", []) if p.get("in") == "query"}
            if "requestBody" in operation or queries - {"page"} or method in WRITES:
                codes.add("400")
            if "requestBody" in operation:
                codes.add("415")
            if method in WRITES:
                codes |= {"403", "413"}
            if "{" in path or "page" in queries or "workspace" in _body_fields(operation, result):
                codes.add("404")
            for code in sorted(codes):
                answers.setdefault(code, {"description": ERROR_ANSWERS[code]})
            for code, answer in answers.items():
                if code.startswith("4"):
                    answer.setdefault(
                        "content", {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
                    )
                    if not answer.get("description"):
                        answer["description"] = ERROR_ANSWERS.get(code, "")
            if "429" in answers:
                answers["429"].setdefault("headers", RETRY_AFTER)
            operation["responses"] = dict(sorted(answers.items()))
    return result


def _body_fields(operation, result) -> set[str]:
    """The names of the fields of an operation's JSON body."""
    schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    if ref := schema.get("$ref"):
        schema = result["components"]["schemas"].get(ref.rsplit("/", 1)[-1], {})
    return set(schema.get("properties", {}))
