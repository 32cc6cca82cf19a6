from __future__ import annotations

from rest_framework import serializers

from cluster.models import Accelerator, CachedArtifact, Node
from config.api import SlugLookupField


class AcceleratorSerializer(serializers.ModelSerializer):
    node = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = Accelerator
        fields = ["id", "node", "kind", "index", "name", "uuid", "memory_total_bytes", "memory_free_bytes",
                  "utilization_percent", "cores", "updated_at"]  # fmt: skip
        read_only_fields = fields


class NodeSerializer(serializers.ModelSerializer):
    status = serializers.CharField(read_only=True)
    accelerators = AcceleratorSerializer(many=True, read_only=True)

    class Meta:
        model = Node
        fields = ["id", "name", "status", "address", "hostname", "cache_dir", "cache_quota_bytes", "cache_used_bytes",
                  "disk_free_bytes", "cpu_count", "memory_total_bytes", "memory_available_bytes", "runtimes",
                  "started_at", "last_seen_at", "accelerators"]  # fmt: skip
        read_only_fields = fields


class CachedArtifactSerializer(serializers.ModelSerializer):
    node = serializers.SlugRelatedField(slug_field="name", read_only=True)
    artifact_name = serializers.CharField(source="artifact.name", read_only=True)
    percent = serializers.IntegerField(read_only=True)

    class Meta:
        model = CachedArtifact
        fields = ["id", "node", "artifact", "artifact_name", "revision", "status", "error", "bytes_total", "bytes_done",
                  "percent", "bytes_transferred", "rate_bytes_per_second", "eta_seconds", "unverified",
                  "requested_at", "started_at", "finished_at", "last_used_at"]  # fmt: skip
        read_only_fields = fields


class FetchRequestSerializer(serializers.Serializer):
    artifact = serializers.IntegerField(help_text="The id of a ready model or adapter.")
    node = SlugLookupField(slug_field="name", queryset=Node.objects.all())
