from __future__ import annotations

from rest_framework import serializers

from accounts.models import ApiToken, Membership, Role, Workspace
from audit.models import AuditEntry


class WorkspaceSerializer(serializers.ModelSerializer):
    role = serializers.SerializerMethodField()

    class Meta:
        model = Workspace
        fields = ["id", "name", "slug", "role", "created_at"]

    def get_role(self, workspace: Workspace) -> str | None:
        user = self.context["request"].user
        return Membership.objects.filter(workspace=workspace, user=user).values_list("role", flat=True).first()


class WorkspaceCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, help_text="Unique across the console; its slug is made from it.")


class MembershipSerializer(serializers.ModelSerializer):
    user = serializers.IntegerField(source="user_id", read_only=True, help_text="The member's user id.")
    username = serializers.CharField(source="user.username", read_only=True)

    class Meta:
        model = Membership
        fields = ["user", "username", "role", "created_at"]
        read_only_fields = fields


class MembershipCreateSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150, help_text="The user to add, by their sign-in name.")
    role = serializers.ChoiceField(
        choices=Role.choices,
        default=Role.VIEWER,
        help_text="Owners manage members; editors change things; viewers look.",
    )


class MembershipUpdateSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=Role.choices)


class ApiTokenSerializer(serializers.ModelSerializer):
    class Meta:
        model = ApiToken
        fields = ["id", "name", "prefix", "scope", "expires_at", "created_at", "last_used_at"]
        read_only_fields = ["id", "prefix", "created_at", "last_used_at"]
        extra_kwargs = {
            "last_used_at": {"help_text": "When it was last used, to the minute; null: never."},
        }


class ApiTokenCreatedSerializer(ApiTokenSerializer):
    token = serializers.CharField(read_only=True, help_text="Shown once; store it now.")

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "token"]


class AuditEntrySerializer(serializers.ModelSerializer):
    workspace = serializers.SlugRelatedField(slug_field="slug", read_only=True, allow_null=True)
    actor = serializers.CharField(source="actor_name", read_only=True, help_text='A username, or "system".')

    class Meta:
        model = AuditEntry
        fields = [
            "id", "at", "workspace", "workspace_name", "actor", "address", "action", "target_type", "target_id",
            "target_name", "detail",
        ]  # fmt: skip
        read_only_fields = fields
