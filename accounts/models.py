from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class Workspace(models.Model):
    """A team's space: every connection, model, adapter, deployment and key belongs to one."""

    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=100, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    EDITOR = "editor", "Editor"
    VIEWER = "viewer", "Viewer"


class Membership(models.Model):
    workspace = models.ForeignKey(Workspace, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["workspace", "user"], name="one_membership_per_user")]

    def __str__(self) -> str:
        return f"{self.user} in {self.workspace} ({self.role})"

    @property
    def can_write(self) -> bool:
        return self.role in (Role.OWNER, Role.EDITOR)


class HashedSecret(models.Model):
    """A secret shown once, when it is created: only its SHA-256 (`digest`) is
    stored. Each kind declares its own `prefix`, the secret's first characters
    that tell secrets apart in lists."""

    name = models.CharField(max_length=100)
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class TokenScope(models.TextChoices):
    """What a personal API token may do, each scope including the one before:
    read: GET (and HEAD, OPTIONS) only; write: everything its owner may do,
    except administration; admin: also create and revoke tokens, create
    workspaces, and add, change and remove members."""

    READ = "read", "Read"
    WRITE = "write", "Write"
    ADMIN = "admin", "Admin"

    @classmethod
    def covers(cls, scope: str, needed: str) -> bool:
        order = list(cls.values)
        return order.index(scope) >= order.index(needed)


class ApiToken(HashedSecret):
    """A personal token for the REST API."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    prefix = models.CharField(max_length=12, help_text="The token's first characters, to tell tokens apart.")
    scope = models.CharField(
        max_length=10,
        choices=TokenScope.choices,
        default=TokenScope.WRITE,
        help_text="read: look only; write: change things too; admin: also manage tokens, workspaces and members.",
    )
    expires_at = models.DateTimeField(null=True, blank=True, help_text="When it stops working; empty: never.")

    def is_expired(self, now=None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())
