"""DRF's multipart parser with a cap on the request body. JSON and form bodies need none here: DRF reads
them through Django's request.body, which refuses one over DATA_UPLOAD_MAX_MEMORY_SIZE (config/api.py
answers that 413). A multipart body is streamed instead, and Django caps only its fields, not its files."""

from __future__ import annotations

from django.conf import settings
from rest_framework import exceptions, parsers, status


class RequestTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "request_too_large"


def too_large_message() -> str:
    return f"The request body is over the API's limit of {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."


def too_many_fields_message() -> str:
    return (
        f"The form body has more than {settings.DATA_UPLOAD_MAX_NUMBER_FIELDS} fields, more than the API reads; "
        "send JSON."
    )


class MultiPartParser(parsers.MultiPartParser):
    """Refuses (413) a multipart body whose declared length is over DATA_UPLOAD_MAX_MEMORY_SIZE before
    reading any of it: the API takes no file uploads, so nothing that large is ever legitimate."""

    def parse(self, stream, media_type=None, parser_context=None):
        request = (parser_context or {}).get("request")
        declared = request.META.get("CONTENT_LENGTH") if request is not None else None
        if declared and str(declared).isdigit() and int(declared) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            raise RequestTooLarge(too_large_message())
        return super().parse(stream, media_type, parser_context)
