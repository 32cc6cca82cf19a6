"""All writes and state transitions of the registry: connections, artifacts,
inspection and compatibility."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from accounts.models import Workspace
from audit.services import audit_record
from config import jobs
from config.errors import DomainError
from config.vault import seal, unseal
from registry import dependents, tasks
from registry.compatibility import adapter_rank, check_fit, runtime_problems
from registry.inspection import Inspection, inspect_source
from registry.models import (
    Artifact,
    ArtifactFile,
    ArtifactKind,
    ArtifactStatus,
    ArtifactTensors,
    Compatibility,
    Connection,
    ConnectionKind,
    tensors_from_json,
    tensors_to_json,
)
from registry.sources import SourceError, check_connection, location_problem, open_source
from registry.sources.local import confined_root

log = logging.getLogger(__name__)

SECRET_FIELDS = {
    ConnectionKind.S3: ("access_key_id", "secret_access_key"),
    ConnectionKind.HF: ("token",),
    ConnectionKind.LOCAL: (),
}
PLAIN_FIELDS = ("endpoint_url", "region", "bucket", "addressing_style", "verify_tls", "ca_bundle", "root_path")


# Connections ---------------------------------------------------------------


def _validate_connection(connection: Connection) -> None:
    if connection.kind == ConnectionKind.S3 and not connection.bucket:
        raise DomainError("An S3 connection needs a bucket.")
    if connection.kind == ConnectionKind.LOCAL:
        try:
            confined_root(connection.root_path, workspace=connection.workspace)
        except SourceError as exc:
            raise DomainError(str(exc)) from None


def _save_connection(connection: Connection) -> None:
    _validate_connection(connection)
    try:
        with transaction.atomic():
            connection.save()
    except IntegrityError:
        raise DomainError(f"This workspace already has a connection named “{connection.name}”.") from None


def _check_ambient(user, value: bool) -> None:
    if value and not (user is not None and user.is_staff):
        raise PermissionDenied(
            "Only an administrator may let a connection use the console's own credentials; "
            "enter this connection's own access key or token instead."
        )


def connection_create(
    *,
    workspace: Workspace,
    name: str,
    kind: str,
    user=None,
    secrets: dict | None = None,
    use_ambient_credentials: bool = False,
    **fields,
) -> Connection:
    """Creates a connection; `secrets` (access keys, a token) are encrypted and never shown again."""
    if kind not in ConnectionKind.values:
        raise DomainError(f"Unknown connection kind “{kind}”; use one of {', '.join(ConnectionKind.values)}.")
    _check_ambient(user, use_ambient_credentials)
    connection = Connection(
        workspace=workspace,
        name=name.strip(),
        kind=kind,
        created_by=user,
        use_ambient_credentials=use_ambient_credentials,
    )
    for key, value in fields.items():
        if key not in PLAIN_FIELDS:
            raise DomainError(f"A connection has no field “{key}”.")
        setattr(connection, key, value)
    allowed = SECRET_FIELDS[kind]
    connection.encrypted_secrets = seal({k: v for k, v in (secrets or {}).items() if k in allowed})
    with transaction.atomic():
        _save_connection(connection)
        audit_record(action="connection.create", target=connection, detail={"kind": kind})
    log.info("connection %s created in workspace %s", connection.pk, workspace.pk)
    return connection


def _destination(connection: Connection) -> tuple[str, str]:
    """Where a connection's secrets are sent: its endpoint, and the bucket when the bucket is part of the host
    name (virtual-host addressing)."""
    bucket = connection.bucket if connection.addressing_style == "virtual" else ""
    return connection.endpoint_url.strip().rstrip("/").lower(), bucket


def connection_update(
    *,
    connection: Connection,
    secrets: dict | None = None,
    user=None,
    use_ambient_credentials: bool | None = None,
    **fields,
) -> Connection:
    """Changes a connection. Secrets left blank keep their saved values, unless the endpoint (or the bucket's
    host) changes: then the saved secrets and the use of the console's own credentials are dropped, so that
    nobody can send an owner's key or token to a server of their choosing without knowing it."""
    before = _destination(connection)
    changed = []
    for key, value in fields.items():
        if key not in (*PLAIN_FIELDS, "name"):
            raise DomainError(f"A connection has no field “{key}”.")
        if getattr(connection, key) != value:
            changed.append(key)
        setattr(connection, key, value)
    current = unseal(connection.encrypted_secrets)
    detail: dict = {}
    if _destination(connection) != before:
        detail["secrets_dropped"] = sorted(current) + (
            ["use_ambient_credentials"] if connection.use_ambient_credentials else []
        )
        current = {}
        connection.use_ambient_credentials = False
    if use_ambient_credentials is not None and use_ambient_credentials != connection.use_ambient_credentials:
        _check_ambient(user, use_ambient_credentials)
        connection.use_ambient_credentials = use_ambient_credentials
        changed.append("use_ambient_credentials")
    given = {k: v for k, v in (secrets or {}).items() if v and k in SECRET_FIELDS[connection.kind]}
    current.update(given)
    connection.encrypted_secrets = seal(current)
    with transaction.atomic():
        _save_connection(connection)
        audit_record(
            action="connection.update",
            target=connection,
            detail={"fields": changed, "secrets_set": sorted(given), **detail},
        )
    return connection


def connection_delete(*, connection: Connection) -> None:
    """Deletes a connection; refused while artifacts are registered through it."""
    count = connection.artifacts.count()
    if count:
        raise DomainError(f"{count} registered artifact(s) use this connection; delete them first.")
    with transaction.atomic():
        audit_record(action="connection.delete", target=connection)
        connection.delete()


def connection_test(*, connection: Connection) -> tuple[bool, str]:
    """Tries the connection and records the outcome; returns (ok, message)."""
    try:
        ok, message = True, check_connection(connection)
    except SourceError as exc:
        ok, message = False, str(exc)
    except DomainError as exc:
        ok, message = False, exc.message
    Connection.objects.filter(pk=connection.pk).update(
        last_checked_at=timezone.now(), last_check_ok=ok, last_check_message=message
    )
    connection.refresh_from_db(fields=["last_checked_at", "last_check_ok", "last_check_message"])
    return ok, message


# Artifacts -----------------------------------------------------------------


def artifact_register(
    *,
    workspace: Workspace,
    name: str,
    kind: str,
    connection: Connection,
    location: str,
    revision: str = "",
    description: str = "",
    tags: list[str] | None = None,
    license: str = "",
    user=None,
) -> Artifact:
    """Registers a base model or adapter as pending and queues its inspection."""
    if kind not in ArtifactKind.values:
        raise DomainError(f"Unknown kind “{kind}”; use “base” or “adapter”.")
    if connection.workspace_id != workspace.pk:
        raise DomainError("That connection belongs to another workspace.")
    _check_location(connection, location)
    artifact = Artifact(
        workspace=workspace,
        name=name.strip(),
        kind=kind,
        connection=connection,
        location=location.strip(),
        revision=revision.strip(),
        description=description,
        tags=_clean_tags(tags),
        license=license.strip(),
        created_by=user,
        sent_at=timezone.now(),
    )
    try:
        with transaction.atomic():
            artifact.save()
            audit_record(action=f"{artifact.kind_noun}.register", target=artifact, detail={"location": artifact.where})
            _send_inspection(artifact.pk)
    except IntegrityError:
        raise DomainError(f"This workspace already has a model or adapter named “{name}”.") from None
    return artifact


def artifact_update(*, artifact: Artifact, **fields) -> Artifact:
    """Changes the descriptive fields; a new location or revision means a new inspection."""
    editable = {"name", "description", "tags", "license", "location", "revision"}
    changed = []
    for key, value in fields.items():
        if key not in editable:
            raise DomainError(f"“{key}” cannot be changed after registration.")
        if key == "tags":
            value = _clean_tags(value)
        elif isinstance(value, str):
            value = value.strip()
        if key == "location":
            _check_location(artifact.connection, value)
        if value != getattr(artifact, key):
            changed.append(key)
        setattr(artifact, key, value)
    reinspect = bool({"location", "revision"} & set(changed))
    if reinspect:  # an inspection running now is of the old location: its result will not be recorded
        for key, value in _wanted_inspection().items():
            setattr(artifact, key, value)
    try:
        with transaction.atomic():
            artifact.save()
            audit_record(action=f"{artifact.kind_noun}.update", target=artifact, detail={"fields": changed})
            if reinspect:
                _send_inspection(artifact.pk)
    except IntegrityError:
        raise DomainError(f"This workspace already has a model or adapter named “{artifact.name}”.") from None
    return artifact


def artifact_reinspect(*, artifact: Artifact) -> Artifact:
    """Queues a fresh inspection (after the source changed, or a connection was fixed)."""
    if artifact.status == ArtifactStatus.INSPECTING:
        raise DomainError("It is being inspected right now; wait for that to finish.")
    with transaction.atomic():
        Artifact.objects.filter(pk=artifact.pk).update(**_wanted_inspection())
        audit_record(action=f"{artifact.kind_noun}.reinspect", target=artifact)
        _send_inspection(artifact.pk)
    artifact.refresh_from_db()
    return artifact


def artifact_delete(*, artifact: Artifact) -> None:
    """Deletes an artifact, its verdicts and its cache entries; refused while
    something (a deployment, a node's cache lease) uses it."""
    holders = dependents.users_of(artifact)
    if holders:
        raise DomainError(
            f"{artifact.name} is in use ({', '.join(holders)}); stop what uses it before deleting it.", status=409
        )
    with transaction.atomic():
        audit_record(action=f"{artifact.kind_noun}.delete", target=artifact)
        artifact.delete()


def _check_location(connection: Connection, location: str) -> None:
    """Raises DomainError when `location` cannot name an artifact behind `connection`."""
    if not location.strip():
        raise DomainError("Say where the artifact is: a bucket prefix, a repository id or a folder.")
    if problem := location_problem(connection, location):
        raise DomainError(problem)


def _clean_tags(tags) -> list[str]:
    if isinstance(tags, str):
        tags = tags.split(",")
    return sorted({str(t).strip() for t in tags or [] if str(t).strip()})


# Inspection ----------------------------------------------------------------


def _wanted_inspection() -> dict:
    """The fields that ask for a fresh inspection (a new claim, a new count of attempts)."""
    return dict(
        status=ArtifactStatus.PENDING, claimed_by="", claimed_at=None, sent_at=timezone.now(), inspection_attempts=0
    )


def _send_inspection(artifact_id: int) -> None:
    jobs.send_on_commit(lambda: tasks.inspect_artifact.delay(artifact_id), what=f"inspection {artifact_id}")


def artifact_inspect(*, artifact_id: int) -> Artifact | None:
    """Claims a pending artifact, inspects its source and records either the
    whole result (ready) or every reason it was refused (invalid), in one
    transaction so nothing is ever half-registered. Then refreshes its
    compatibility verdicts. Returns None when there was nothing to claim (a
    repeated message) or when the claim was lost meanwhile (the artifact was
    edited, or the sweep gave the inspection to another worker)."""
    owner = jobs.worker_id()
    claimed = Artifact.objects.filter(pk=artifact_id, status=ArtifactStatus.PENDING).update(
        status=ArtifactStatus.INSPECTING,
        claimed_by=owner,
        claimed_at=timezone.now(),
        inspection_attempts=F("inspection_attempts") + 1,
    )
    if not claimed:
        return None
    try:
        return _inspect_claimed(artifact_id, owner)
    except jobs.DATABASE_DOWN:
        # Not the source's fault, and not an attempt: wanted again once the database is back; the task retries.
        held = Artifact.objects.filter(pk=artifact_id, status=ArtifactStatus.INSPECTING, claimed_by=owner)
        jobs.put_back_when_database_returns(
            lambda: held.update(
                status=ArtifactStatus.PENDING,
                claimed_by="",
                claimed_at=None,
                inspection_attempts=F("inspection_attempts") - 1,
            ),
            what=f"inspection {artifact_id}",
        )
        raise


def _inspect_claimed(artifact_id: int, owner: str) -> Artifact | None:
    artifact = Artifact.objects.select_related("connection").get(pk=artifact_id)
    try:
        source = open_source(artifact.connection, location=artifact.location, revision=artifact.revision)
        result = inspect_source(
            source,
            kind=artifact.kind,
            allow_pickle=settings.PLUGBOARD_ALLOW_PICKLE_WEIGHTS,
            max_header=settings.PLUGBOARD_MAX_SAFETENSORS_HEADER,
            max_files=settings.PLUGBOARD_MAX_ARTIFACT_FILES,
        )
    except (SourceError, DomainError) as exc:
        result = Inspection(kind=artifact.kind, problems=[getattr(exc, "message", str(exc))])
    except Exception:
        log.exception("inspection of artifact %s failed unexpectedly", artifact_id)
        result = Inspection(kind=artifact.kind, problems=["Inspection failed unexpectedly; see the worker's log."])
    if result.ok and artifact.is_adapter:
        result.problems.extend(runtime_problems(result.config, result.tensors))
    if not _record_inspection(artifact, result, owner=owner):
        log.warning("inspection of artifact %s was taken from %s meanwhile; its result is dropped", artifact_id, owner)
        return None
    compatibility_refresh(artifact=artifact)
    return artifact


def inspections_sweep() -> dict[str, list[int]]:
    """Finds inspections again whose message or worker was lost (see config/jobs.py), run every minute by beat:
    - one claimed longer ago than the inspection task's time limit has lost its worker (a worker that lives
      is killed at that limit): it is queued again, or after PLUGBOARD_INSPECTION_ATTEMPTS tries marked
      invalid with the reason;
    - a pending one whose message went out PLUGBOARD_JOB_RESEND_SECONDS ago is sent again.
    Returns the ids by what was done."""
    done: dict[str, list[int]] = {"failed": [], "requeued": [], "resent": []}
    dead_before = timezone.now() - timedelta(seconds=tasks.INSPECTION_TIME_LIMIT + 60)
    stale = Artifact.objects.filter(status=ArtifactStatus.INSPECTING).filter(
        Q(claimed_at__lt=dead_before) | Q(claimed_at=None)
    )
    for pk, claimed_at, attempts in stale.values_list("pk", "claimed_at", "inspection_attempts"):
        still = Artifact.objects.filter(pk=pk, status=ArtifactStatus.INSPECTING, claimed_at=claimed_at)
        if attempts >= settings.PLUGBOARD_INSPECTION_ATTEMPTS:
            reason = (
                f"The inspection was started {attempts} times and its worker stopped each time before it "
                "finished (see the control worker's log: killed for memory?). Inspect it again to retry."
            )
            if still.update(
                status=ArtifactStatus.INVALID, problems=[reason], claimed_by="", inspected_at=timezone.now()
            ):
                done["failed"].append(pk)
        elif still.update(status=ArtifactStatus.PENDING, claimed_by="", claimed_at=None, sent_at=timezone.now()):
            log.warning("inspection of artifact %s went silent; queued again", pk)
            done["requeued"].append(pk)
            _resend_inspection(pk)
    lost = Artifact.objects.filter(status=ArtifactStatus.PENDING).filter(
        Q(sent_at__lt=jobs.resend_before()) | Q(sent_at=None)
    )
    for pk in lost.exclude(pk__in=done["requeued"]).values_list("pk", flat=True):
        Artifact.objects.filter(pk=pk).update(sent_at=timezone.now())
        done["resent"].append(pk)
        _resend_inspection(pk)
    return done


def _resend_inspection(artifact_id: int) -> None:
    jobs.send(lambda: tasks.inspect_artifact.delay(artifact_id), what=f"inspection {artifact_id}")


def _record_inspection(artifact: Artifact, result: Inspection, *, owner: str) -> bool:
    """Writes the inspection's result if `owner` still holds the claim; says whether it did."""
    fields = _empty_inspection_fields()
    fields.update(
        inspected_at=timezone.now(),
        inspection_bytes_read=result.bytes_read,
        problems=result.problems,
        warnings=result.warnings,
    )
    if result.ok:
        fields.update(_described_fields(artifact.kind, result), status=ArtifactStatus.READY)
    else:
        fields.update(status=ArtifactStatus.INVALID)
    with transaction.atomic():
        held = Artifact.objects.select_for_update().filter(
            pk=artifact.pk, status=ArtifactStatus.INSPECTING, claimed_by=owner
        )
        if not held.exists():
            return False
        ArtifactFile.objects.filter(artifact=artifact).delete()
        if result.ok:
            ArtifactFile.objects.bulk_create(
                ArtifactFile(
                    artifact=artifact, path=f.path, size=f.size, checksum=f.checksum, checksum_kind=f.checksum_kind
                )
                for f in result.files
            )
        for key, value in fields.items():
            setattr(artifact, key, value)
        artifact.save()
        tensors = tensors_to_json(result.tensors) if result.ok else {}
        artifact.tensor_table, _ = ArtifactTensors.objects.update_or_create(
            artifact=artifact, defaults={"tensors": tensors}
        )
    return True


def _empty_inspection_fields() -> dict:
    return dict(
        resolved_revision="", total_bytes=None, weight_bytes=None, parameter_count=None, dtype="", config={},
        architecture="", hidden_size=None, num_layers=None, num_attention_heads=None,
        num_kv_heads=None, vocab_size=None, context_length=None, peft_type="", rank=None, lora_alpha=None,
        target_modules=[], base_model_name_or_path="",
    )  # fmt: skip


def _described_fields(kind: str, result: Inspection) -> dict:
    config = result.config
    fields = dict(
        resolved_revision=result.revision,
        total_bytes=result.total_bytes,
        weight_bytes=result.weight_bytes,
        parameter_count=result.parameter_count,
        dtype=result.dtype,
        config=config,
    )
    if kind == ArtifactKind.BASE:
        text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
        heads = _int(text.get("num_attention_heads"))
        fields.update(
            architecture=(config.get("architectures") or [config.get("model_type", "")])[0] or "",
            hidden_size=_int(text.get("hidden_size")),
            num_layers=_int(text.get("num_hidden_layers")),
            num_attention_heads=heads,
            num_kv_heads=_int(text.get("num_key_value_heads")) or heads,
            vocab_size=_int(text.get("vocab_size")),
            context_length=_int(text.get("max_position_embeddings")),
        )
    else:
        targets = config.get("target_modules") or []
        fields.update(
            peft_type=str(config.get("peft_type", "")),
            rank=adapter_rank(config, result.tensors),
            lora_alpha=config.get("lora_alpha"),
            target_modules=sorted(targets) if isinstance(targets, list) else [str(targets)],
            base_model_name_or_path=str(config.get("base_model_name_or_path") or ""),
        )
    return fields


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# Compatibility -------------------------------------------------------------


def compatibility_refresh(*, artifact: Artifact) -> None:
    """Recomputes every verdict that involves `artifact` against the ready
    artifacts of the other kind in its workspace; drops them if it is not ready."""
    if not artifact.is_ready:
        Compatibility.objects.filter(adapter=artifact).delete()
        Compatibility.objects.filter(base=artifact).delete()
        return
    other_kind = ArtifactKind.BASE if artifact.is_adapter else ArtifactKind.ADAPTER
    others = Artifact.objects.filter(
        workspace=artifact.workspace_id, kind=other_kind, status=ArtifactStatus.READY
    ).select_related("tensor_table")
    own_tensors = tensors_from_json(artifact.tensors)
    with transaction.atomic():
        for other in others:
            adapter, base = (artifact, other) if artifact.is_adapter else (other, artifact)
            adapter_tensors = own_tensors if artifact.is_adapter else tensors_from_json(other.tensors)
            base_tensors = own_tensors if not artifact.is_adapter else tensors_from_json(other.tensors)
            verdict = check_fit(
                adapter_config=adapter.config,
                adapter_tensors=adapter_tensors,
                base_name=base.name,
                base_config=base.config,
                base_tensors=base_tensors,
            )
            Compatibility.objects.update_or_create(
                adapter=adapter,
                base=base,
                defaults={"compatible": verdict.compatible, "reasons": verdict.reasons, "warnings": verdict.warnings},
            )
