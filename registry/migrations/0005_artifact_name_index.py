"""An index on the artifact's name: the models and adapters lists are ordered by name, and without it a page
of 25 out of 10,000 rows read and sorted all 10,000 (bench/registry_list.py)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("registry", "0004_job_claims"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="artifact",
            index=models.Index(fields=["name"], name="artifact_name_idx"),
        ),
    ]
