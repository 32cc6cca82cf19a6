"""The query and the answer of a deployment's server log (GET .../log/)."""

from __future__ import annotations

from rest_framework import exceptions, serializers
from rest_framework.settings import api_settings

from deployments import logs


class LogQuerySerializer(serializers.Serializer):
    lines = serializers.IntegerField(
        min_value=1, max_value=logs.SHOWN_LINES, default=200, help_text="How many of the last lines to answer."
    )
    search = serializers.CharField(
        max_length=200,
        required=False,
        default="",
        allow_blank=True,
        help_text=f"Only lines containing this, case-insensitive, among the last {logs.SEARCHED_BYTES // logs.MiB} MiB "
        "of the log.",
    )
    health_checks = serializers.BooleanField(
        default=False,
        help_text="Also the access lines of the console's own checks (GET /health, /v1/models, /metrics), "
        "hidden by default.",
    )


class DeploymentLogSerializer(serializers.Serializer):
    lines = serializers.ListField(
        child=serializers.CharField(), help_text="The last lines, oldest first, the deployment's key masked as ****."
    )
    matches = serializers.IntegerField(
        allow_null=True, help_text="With `search`: how many lines match in the part searched; otherwise null."
    )
    hidden_health_checks = serializers.IntegerField(
        source="hidden", help_text="Health-check lines left out of the part read."
    )
    truncated = serializers.BooleanField(
        source="cut",
        help_text=f"The log goes further back than the part read (its last {logs.SHOWN_BYTES // logs.KiB} KiB, "
        f"or {logs.SEARCHED_BYTES // logs.MiB} MiB with a search): the deployment page's download has all of it.",
    )
    source = serializers.ChoiceField(
        choices=["file", "copy"],
        help_text="`file`: the server's log file on its node; `copy`: the file cannot be read from the console, "
        "these are the last lines the node reported.",
    )


def log_query(query_params) -> dict:
    """Returns the log query's parameters, validated; a parameter it does not know is a
    400 naming it, as for the lists (config.api.StrictFilterBackend)."""
    known = {*LogQuerySerializer().fields, api_settings.URL_FORMAT_OVERRIDE}
    if unknown := sorted(set(query_params) - known):
        names = ", ".join(f"“{name}”" for name in unknown)
        raise exceptions.ParseError(f"Unknown query parameter {names}; the log takes {', '.join(sorted(known))}.")
    query = LogQuerySerializer(data=query_params)
    query.is_valid(raise_exception=True)
    return query.validated_data
