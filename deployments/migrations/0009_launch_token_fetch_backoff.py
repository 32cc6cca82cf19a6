from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("deployments", "0008_process_identity"),
    ]

    operations = [
        migrations.AddField(
            model_name="deployment",
            name="launch_token",
            field=models.CharField(blank=True, max_length=64),
        ),
        migrations.AddField(
            model_name="deploymentadapter",
            name="fetch_failures",
            field=models.PositiveIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="deploymentadapter",
            name="fetch_failed_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
