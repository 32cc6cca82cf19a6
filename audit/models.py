"""The audit log: who did what to which object of a workspace, when and from which address.

Entries are written by the services of every app (audit.services.audit_record) and never changed:
saving an existing entry or deleting one raises, the admin shows them read-only, and the API and the
pages only list them. The models point at accounts' by name, so that this app sits below every other."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class ImmutableEntry(Exception):
    pass


class AuditEntry(models.Model):
    at = models.DateTimeField(auto_now_add=True, db_index=True)
    # Null for what belongs to no workspace (a personal token); kept (SET_NULL) when the workspace goes,
    # so an administrator can still read what happened to it.
    workspace = models.ForeignKey(
        "accounts.Workspace", null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_entries"
    )
    workspace_name = models.CharField(max_length=100, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The name at the time: a deleted account's entries still say who it was. "system" for background work.
    actor_name = models.CharField(max_length=150)
    address = models.GenericIPAddressField(null=True, blank=True)
    action = models.CharField(max_length=40, db_index=True)  # "<kind>.<verb>", e.g. "deployment.stop"
    target_type = models.CharField(max_length=30)
    target_id = models.BigIntegerField(null=True, blank=True)
    target_name = models.CharField(max_length=200, blank=True)
    # What changed, by name (never a secret's value): {"fields": ["endpoint_url"], "adapter": "pirate"}.
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["workspace", "-at"])]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_name} {self.action} {self.target_name}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise ImmutableEntry("An audit entry is never changed.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ImmutableEntry("An audit entry is never deleted.")
