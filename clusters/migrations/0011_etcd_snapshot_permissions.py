"""Let the default groups see etcd snapshots, and operators restore a cluster from one.

- viewers and operators: view etcd snapshots;
- operators: restore etcd from a snapshot (taking and pruning snapshots is requesting a job).
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

GROUP_PERMISSIONS = {
    "viewers": ["view_etcdsnapshot"],
    "operators": ["view_etcdsnapshot", "restore_etcdsnapshot"],
}


def grant(apps, schema_editor):
    alias = schema_editor.connection.alias
    app_config = apps.get_app_config("clusters")
    app_config.models_module = True
    try:
        create_permissions(app_config, apps=apps, verbosity=0, using=alias)
    finally:
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, codenames in GROUP_PERMISSIONS.items():
        group, _ = Group.objects.using(alias).get_or_create(name=name)
        permissions = Permission.objects.using(alias).filter(content_type__app_label="clusters", codename__in=codenames)
        missing = set(codenames) - set(permissions.values_list("codename", flat=True))
        if missing:
            raise RuntimeError(f"Permissions missing for group {name}: {', '.join(sorted(missing))}")
        group.permissions.add(*permissions)


class Migration(migrations.Migration):
    dependencies = [("clusters", "0010_etcd_snapshots_and_schedule")]

    operations = [migrations.RunPython(code=grant, reverse_code=migrations.RunPython.noop)]
