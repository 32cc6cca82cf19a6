"""API plumbing shared by every app: the error shape, reading a request's body and query."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from config.errors import DomainError


def exception_handler(exc, context):
    """Answers every API error as JSON `{"detail": ..., ...}` a person can act on;
    domain errors from services become 400 (or their own status)."""
    if isinstance(exc, DomainError):
        return Response({"detail": exc.message, **exc.extra}, status=exc.status)
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


def filter_by_query(queryset, request, **lookups):
    """Returns `queryset` narrowed by each query parameter of `lookups`
    ({parameter: field lookup}) that the request gives a value."""
    for parameter, lookup in lookups.items():
        if value := request.query_params.get(parameter):
            queryset = queryset.filter(**{lookup: value})
    return queryset
