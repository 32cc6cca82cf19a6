"""Records each existing deployment's arguments and resources as its current
revision, so a deployment made before revisions were kept has a history of one."""

from django.db import migrations


def record_current(apps, schema_editor):
    Deployment = apps.get_model("deployments", "Deployment")
    DeploymentRevision = apps.get_model("deployments", "DeploymentRevision")
    for d in Deployment.objects.filter(revisions__isnull=True).iterator():
        recorded = DeploymentRevision.objects.create(
            deployment=d, number=d.revision, node_id=d.node_id, accelerator_indices=d.accelerator_indices,
            settings=d.settings, extra_args=d.extra_args, extra_env=d.extra_env,
            # Who made a later revision was never kept; revision 1 is the deployment's creator's.
            created_by_id=d.created_by_id if d.revision == 1 else None,
        )  # fmt: skip
        # Its last change is the nearest known time of this revision (auto_now_add set "now").
        DeploymentRevision.objects.filter(pk=recorded.pk).update(created_at=d.updated_at)


class Migration(migrations.Migration):
    dependencies = [
        ("deployments", "0005_revisions"),
    ]

    operations = [
        migrations.RunPython(record_current, migrations.RunPython.noop),
    ]
