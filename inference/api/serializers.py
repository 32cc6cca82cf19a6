from __future__ import annotations

from rest_framework import serializers

from accounts.models import Workspace
from config.api import SlugLookupField
from deployments.models import Deployment
from inference.models import InferenceKey, UsageRecord
from inference.selectors import GROUPS, PERIODS


class InferenceKeySerializer(serializers.ModelSerializer):
    workspace = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    deployments = serializers.SlugRelatedField(slug_field="name", many=True, read_only=True)
    state = serializers.SerializerMethodField(help_text="active, expired or revoked")

    class Meta:
        model = InferenceKey
        fields = [
            "id", "workspace", "name", "prefix", "all_deployments", "deployments", "expires_at", "revoked_at",
            "state", "created_at", "last_used_at",
        ]  # fmt: skip
        read_only_fields = fields

    def get_state(self, key: InferenceKey) -> str:
        if key.revoked_at is not None:
            return "revoked"
        return "expired" if key.is_expired else "active"


class InferenceKeyCreateSerializer(serializers.Serializer):
    workspace = SlugLookupField(
        slug_field="slug", queryset=Workspace.objects.all(), required=False,
        help_text="The workspace's slug; needed only when you may write in several.",
    )  # fmt: skip
    name = serializers.CharField(max_length=100)
    deployments = serializers.ListField(
        child=serializers.PrimaryKeyRelatedField(queryset=Deployment.objects.all()), max_length=1000, required=False,
        help_text="Deployment ids the key may use; leave out for every deployment of the workspace, now and later.",
    )  # fmt: skip
    expires_at = serializers.DateTimeField(required=False, allow_null=True)


class InferenceKeyCreatedSerializer(InferenceKeySerializer):
    key = serializers.CharField(read_only=True, help_text="Shown once; store it now.")

    class Meta(InferenceKeySerializer.Meta):
        fields = [*InferenceKeySerializer.Meta.fields, "key"]
        read_only_fields = fields


class UsageRecordSerializer(serializers.ModelSerializer):
    # Null: the gateway's requests have no user, the playground's no key, and either outlives its deployment.
    key = serializers.SlugRelatedField(slug_field="prefix", read_only=True, allow_null=True)
    user = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    deployment = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)

    class Meta:
        model = UsageRecord
        fields = [
            "id", "created_at", "key", "user", "deployment", "model", "adapter", "endpoint", "stream", "status",
            "prompt_tokens", "completion_tokens", "ttft_ms", "duration_ms",
        ]  # fmt: skip
        read_only_fields = fields


class UsageGroupSerializer(serializers.Serializer):
    name = serializers.CharField(help_text="The deployment, the model id, or the key's name and prefix.")
    requests = serializers.IntegerField()
    errors = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    mean_ttft_ms = serializers.FloatField(allow_null=True)
    mean_duration_ms = serializers.FloatField(allow_null=True)


class UsageBucketSerializer(serializers.Serializer):
    start = serializers.DateTimeField()
    name = serializers.CharField()
    requests = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()


class UsageSummarySerializer(serializers.Serializer):
    # The choices the summary takes (inference.selectors), so that the answer's enum is the query's.
    period = serializers.ChoiceField(choices=list(PERIODS))
    by = serializers.ChoiceField(choices=list(GROUPS))
    since = serializers.DateTimeField()
    bucket_seconds = serializers.IntegerField()
    groups = UsageGroupSerializer(many=True)
    series = UsageBucketSerializer(many=True, help_text="Per bucket of `bucket_seconds` and group, oldest first.")
