"""API plumbing shared by every app: the error shape (and its OpenAPI
description), reading a request's body, filtering a list by its query."""

from __future__ import annotations

from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django_filters.rest_framework import DjangoFilterBackend
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import exception_handler as drf_exception_handler

from config.errors import DomainError
from config.parsers import too_large_message


def exception_handler(exc, context):
    """Answers every API error as JSON `{"detail": ..., ...}` a person can act on;
    domain errors from services become 400 (or their own status)."""
    if isinstance(exc, DomainError):
        return Response({"detail": exc.message, **exc.extra}, status=exc.status)
    if isinstance(exc, RequestDataTooBig):  # DRF read request.body, which Django caps (else a bare 400)
        return Response({"detail": too_large_message()}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
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
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
            "description": "Only when fields of the body or the query are invalid: each field's problems.",
        },
    },
    "required": ["detail"],
}

ERROR_ANSWERS = {
    "400": "The request is invalid: `detail` says why and `errors`, when fields are at fault, names each. "
    "An unknown query parameter is a 400 too.",
    "401": "No valid credentials: sign in, or send a personal API token as `Authorization: Bearer pbt_…`.",
    "403": "Signed in, but not allowed: viewers may not change anything in a workspace.",
    "404": "No such object, or it belongs to a workspace the caller is not a member of: the answer is the same.",
    "409": "The object's state does not allow it now; `detail` says what to do first.",
}


def document_errors(result, generator, request, public):
    """drf-spectacular postprocessing hook: adds the error shape (`Error`) and the
    4xx answers each operation can give. 401 everywhere a credential is needed,
    400 where a body or query parameters are read, 403 on writes, 404 where a path
    names an object or a body names a workspace; 409 only where a view declares it.
    Every 4xx, declared or added, answers `Error`."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            answers = operation.setdefault("responses", {})
            codes = set()
            if {} not in operation.get("security", []):  # {} would mean "no credentials needed"
                codes.add("401")
            queries = [p for p in operation.get("parameters", []) if p.get("in") == "query" and p["name"] != "page"]
            if "requestBody" in operation or queries:
                codes.add("400")
            if method in ("post", "put", "patch", "delete"):
                codes.add("403")
            if "{" in path or "workspace" in _body_fields(operation, result):
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
            operation["responses"] = dict(sorted(answers.items()))
    return result


def _body_fields(operation, result) -> set[str]:
    """The names of the fields of an operation's JSON body."""
    schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    if ref := schema.get("$ref"):
        schema = result["components"]["schemas"].get(ref.rsplit("/", 1)[-1], {})
    return set(schema.get("properties", {}))
