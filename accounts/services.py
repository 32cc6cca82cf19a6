from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from accounts.models import ApiToken, Membership, Role, TokenScope, Workspace
from audit.services import audit_record
from config.errors import DomainError

TOKEN_PREFIX = "pbt_"


def token_digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def workspace_create(*, name: str, owner) -> Workspace:
    """Creates a workspace with `owner` as its owner."""
    slug = slugify(name)
    if not slug:
        raise DomainError("A workspace name needs at least one letter or digit.")
    if Workspace.objects.filter(slug=slug).exists():
        raise DomainError(f"A workspace named “{name}” already exists.")
    with transaction.atomic():
        workspace = Workspace.objects.create(name=name, slug=slug)
        Membership.objects.create(workspace=workspace, user=owner, role=Role.OWNER)
        audit_record(action="workspace.create", target=workspace, workspace=workspace)
    return workspace


def _check_role(role: str) -> None:
    if role not in Role.values:
        raise DomainError(f"Unknown role “{role}”; use one of {', '.join(Role.values)}.")


def _keep_an_owner(membership: Membership, *, doing: str) -> None:
    """Raises DomainError (409) when `membership` is its workspace's last owner: a
    workspace without one could never manage its members again."""
    if membership.role != Role.OWNER:
        return
    # Locks the owners' rows (the caller holds a transaction), so two owners cannot demote each other at once.
    owners = Membership.objects.select_for_update().filter(workspace=membership.workspace_id, role=Role.OWNER)
    if list(owners.values_list("pk", flat=True)) == [membership.pk]:
        raise DomainError(
            f"{membership.user} is the last owner of {membership.workspace}; make someone else an owner "
            f"before {doing}.",
            status=409,
        )


def membership_set(*, workspace: Workspace, user, role: str) -> Membership:
    """Adds `user` to `workspace` with `role`, or changes the role they have;
    refuses to demote the workspace's last owner."""
    _check_role(role)
    with transaction.atomic():
        current = Membership.objects.filter(workspace=workspace, user=user).first()
        if current is not None and role != Role.OWNER:
            _keep_an_owner(current, doing="demoting them")
        membership, _ = Membership.objects.update_or_create(workspace=workspace, user=user, defaults={"role": role})
        audit_record(action="member.set", target=membership, detail={"user": user.get_username(), "role": role})
    return membership


def membership_add(*, workspace: Workspace, username: str, role: str) -> Membership:
    """Adds the user named `username` to `workspace` with `role`; refused when
    there is no such user or they are a member already."""
    _check_role(role)
    user = get_user_model().objects.filter(username=username.strip(), is_active=True).first()
    if user is None:
        raise DomainError(f"There is no active user named “{username}”. Check the spelling, or ask an administrator.")
    if Membership.objects.filter(workspace=workspace, user=user).exists():
        raise DomainError(f"{user} is a member of {workspace} already; change their role instead.", status=409)
    with transaction.atomic():
        membership = Membership.objects.create(workspace=workspace, user=user, role=role)
        audit_record(action="member.add", target=membership, detail={"user": user.get_username(), "role": role})
    return membership


def membership_remove(*, membership: Membership) -> None:
    """Removes a member from their workspace; refuses to remove its last owner."""
    with transaction.atomic():
        _keep_an_owner(membership, doing="removing them")
        audit_record(action="member.remove", target=membership, detail={"user": membership.user.get_username()})
        membership.delete()


def api_token_create(*, user, name: str, scope: str = TokenScope.WRITE, expires_at=None) -> tuple[ApiToken, str]:
    """Creates a personal API token with `scope`, working until `expires_at`
    (None: until revoked); returns the row and the raw token, which is never
    stored and cannot be shown again."""
    name = name.strip()
    if not name:
        raise DomainError("Give the token a name, such as the script that will use it.")
    if scope not in TokenScope.values:
        raise DomainError(f"Unknown scope “{scope}”; use one of {', '.join(TokenScope.values)}.")
    if expires_at is not None and expires_at <= timezone.now():
        raise DomainError("The expiry must be in the future; leave it empty for a token that does not expire.")
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        token = ApiToken.objects.create(
            user=user, name=name, prefix=raw[:10], digest=token_digest(raw), scope=scope, expires_at=expires_at
        )
        audit_record(action="token.create", target=token, detail={"scope": scope, "prefix": token.prefix})
    return token, raw


def api_token_revoke(*, token: ApiToken) -> None:
    with transaction.atomic():
        audit_record(action="token.revoke", target=token, detail={"prefix": token.prefix})
        token.delete()


# Recording every use would write to the database on every API request; a minute is precise enough to
# tell a token in use from one forgotten.
LAST_USE_PRECISION = timedelta(minutes=1)


def api_token_check(*, raw: str) -> ApiToken:
    """Returns the token `raw` (with its user), recording its use at most once a
    minute; raises DomainError (401) when it is unknown, revoked, expired or its
    owner is deactivated."""
    token = ApiToken.objects.select_related("user").filter(digest=token_digest(raw)).first()
    if token is None or not token.user.is_active:
        raise DomainError("This API token is unknown or was revoked.", status=401)
    now = timezone.now()
    if token.is_expired(now):
        raise DomainError(
            f"This API token expired at {token.expires_at:%Y-%m-%d %H:%M} UTC; create a new one under Settings.",
            status=401,
        )
    if token.last_used_at is None or now - token.last_used_at >= LAST_USE_PRECISION:
        # Conditional: of several requests at once, one writes.
        ApiToken.objects.filter(pk=token.pk, last_used_at=token.last_used_at).update(last_used_at=now)
    return token


def api_token_authenticate(*, raw: str):
    """Returns the user that owns `raw`, or None when the token does not work
    (unknown, revoked, expired); records when it was last used."""
    try:
        return api_token_check(raw=raw).user
    except DomainError:
        return None


def admin_ensure(*, username: str, password: str | None, workspace_name: str) -> tuple[object, bool, str | None]:
    """Makes sure an administrator and the default workspace exist, the
    administrator owning it. Returns the user, whether it was created, and the
    password when one was generated (to be printed once)."""
    User = get_user_model()
    user = User.objects.filter(username=username).first()
    created, generated = user is None, None
    if created:
        generated = None if password else secrets.token_urlsafe(12)
        user = User.objects.create_superuser(username=username, password=password or generated, email="")
    workspace = Workspace.objects.filter(slug=slugify(workspace_name)).first()
    if workspace is None:
        workspace = workspace_create(name=workspace_name, owner=user)
    else:
        membership_set(workspace=workspace, user=user, role=Role.OWNER)
    return user, created, generated
