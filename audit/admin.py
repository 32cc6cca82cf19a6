from django.contrib import admin

from audit.models import AuditEntry


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    """Read-only: administrators read the log here; nobody edits or deletes an entry."""

    list_display = ("at", "workspace_name", "actor_name", "address", "action", "target_type", "target_name")
    list_filter = ("action", "target_type")
    search_fields = ("actor_name", "target_name", "workspace_name")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
