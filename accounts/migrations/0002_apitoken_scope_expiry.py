from django.db import migrations, models


class Migration(migrations.Migration):
    """Personal API tokens get a scope and an optional expiry. Tokens made before scopes existed could do
    everything their owner could, so they become "admin": no script that uses one breaks."""

    dependencies = [
        ("accounts", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="apitoken",
            name="scope",
            field=models.CharField(
                choices=[("read", "Read"), ("write", "Write"), ("admin", "Admin")],
                default="admin",
                help_text="read: look only; write: change things too; admin: also manage tokens, workspaces and "
                "members.",
                max_length=10,
            ),
            preserve_default=False,
        ),
        migrations.AlterField(
            model_name="apitoken",
            name="scope",
            field=models.CharField(
                choices=[("read", "Read"), ("write", "Write"), ("admin", "Admin")],
                default="write",
                help_text="read: look only; write: change things too; admin: also manage tokens, workspaces and "
                "members.",
                max_length=10,
            ),
        ),
        migrations.AddField(
            model_name="apitoken",
            name="expires_at",
            field=models.DateTimeField(blank=True, help_text="When it stops working; empty: never.", null=True),
        ),
    ]
