"""A cache lease's holder becomes a typed generic relation (content type and id)
instead of a string like "deployment:12" parsed back."""

from __future__ import annotations

import django.db.models.deletion
from django.db import migrations, models


def holders_to_relations(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    CacheLease = apps.get_model("cluster", "CacheLease")
    for lease in CacheLease.objects.all():
        kind, _, pk = lease.holder.partition(":")
        if not pk.isdigit():
            lease.delete()  # no row to point at: nothing can release it but a person, so it goes now
            continue
        lease.holder_type = ContentType.objects.get_or_create(app_label=f"{kind}s", model=kind)[0]
        lease.holder_id = int(pk)
        lease.save(update_fields=["holder_type", "holder_id"])


class Migration(migrations.Migration):
    dependencies = [
        ("cluster", "0001_initial"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.RemoveConstraint(model_name="cachelease", name="one_lease_per_holder"),
        migrations.AddField(
            model_name="cachelease",
            name="holder_type",
            field=models.ForeignKey(
                null=True, on_delete=django.db.models.deletion.CASCADE, related_name="+", to="contenttypes.contenttype"
            ),
        ),
        migrations.AddField(model_name="cachelease", name="holder_id", field=models.PositiveBigIntegerField(null=True)),
        migrations.RunPython(holders_to_relations, migrations.RunPython.noop),
        migrations.RemoveField(model_name="cachelease", name="holder"),
        migrations.AlterField(
            model_name="cachelease",
            name="holder_type",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.CASCADE, related_name="+", to="contenttypes.contenttype"
            ),
        ),
        migrations.AlterField(model_name="cachelease", name="holder_id", field=models.PositiveBigIntegerField()),
        migrations.AddConstraint(
            model_name="cachelease",
            constraint=models.UniqueConstraint(
                fields=("cached", "holder_type", "holder_id"), name="one_lease_per_holder"
            ),
        ),
        migrations.AddIndex(
            model_name="cachelease", index=models.Index(fields=["holder_type", "holder_id"], name="lease_by_holder")
        ),
    ]
