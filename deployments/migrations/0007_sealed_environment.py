"""Deployment environments are sealed at rest: their values can be secrets (a token, a password).
Moves each deployment's and revision's `extra_env` text into `encrypted_env`, sealed with the
console's key (config/vault.py), then drops the plain column."""

from django.db import migrations, models

from config.vault import seal, unseal


def _seal_environments(apps, schema_editor):
    for model in ("Deployment", "DeploymentRevision"):
        rows = apps.get_model("deployments", model).objects.exclude(extra_env="")
        for row in rows.only("pk", "extra_env").iterator():
            blob = seal({"env": row.extra_env}) if row.extra_env.strip() else b""
            rows.model.objects.filter(pk=row.pk).update(encrypted_env=blob)


def _unseal_environments(apps, schema_editor):
    for model in ("Deployment", "DeploymentRevision"):
        rows = apps.get_model("deployments", model).objects.exclude(encrypted_env=b"")
        for row in rows.only("pk", "encrypted_env").iterator():
            rows.model.objects.filter(pk=row.pk).update(extra_env=unseal(row.encrypted_env).get("env", ""))


class Migration(migrations.Migration):
    dependencies = [
        ("deployments", "0006_record_current_revisions"),
    ]

    operations = [
        migrations.AddField(
            model_name="deployment",
            name="encrypted_env",
            field=models.BinaryField(default=b""),
        ),
        migrations.AddField(
            model_name="deploymentrevision",
            name="encrypted_env",
            field=models.BinaryField(default=b""),
        ),
        migrations.RunPython(_seal_environments, _unseal_environments),
        migrations.RemoveField(
            model_name="deployment",
            name="extra_env",
        ),
        migrations.RemoveField(
            model_name="deploymentrevision",
            name="extra_env",
        ),
    ]
