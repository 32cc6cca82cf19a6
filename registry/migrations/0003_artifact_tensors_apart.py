"""Moves each artifact's tensor table out of its row into ArtifactTensors, which list pages never load."""

import django.db.models.deletion
from django.db import migrations, models


def move_tables(apps, schema_editor):
    Artifact = apps.get_model("registry", "Artifact")
    ArtifactTensors = apps.get_model("registry", "ArtifactTensors")
    for artifact_id, tensors in Artifact.objects.values_list("pk", "tensors").iterator(chunk_size=100):
        ArtifactTensors.objects.create(artifact_id=artifact_id, tensors=tensors or {})


def move_back(apps, schema_editor):
    Artifact = apps.get_model("registry", "Artifact")
    ArtifactTensors = apps.get_model("registry", "ArtifactTensors")
    for row in ArtifactTensors.objects.iterator(chunk_size=100):
        Artifact.objects.filter(pk=row.artifact_id).update(tensors=row.tensors)


class Migration(migrations.Migration):
    dependencies = [
        ("registry", "0002_connection_use_ambient_credentials"),
    ]

    operations = [
        migrations.CreateModel(
            name="ArtifactTensors",
            fields=[
                (
                    "artifact",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="tensor_table",
                        serialize=False,
                        to="registry.artifact",
                    ),
                ),
                ("tensors", models.JSONField(default=dict)),
            ],
        ),
        migrations.RunPython(move_tables, move_back),
        migrations.RemoveField(model_name="artifact", name="tensors"),
    ]
