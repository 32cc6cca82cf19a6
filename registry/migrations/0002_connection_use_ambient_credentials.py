from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("registry", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="connection",
            name="use_ambient_credentials",
            field=models.BooleanField(default=False),
        ),
    ]
