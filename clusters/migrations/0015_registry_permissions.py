"""Let the default groups see private registries, and operators manage them.

- viewers: view registries (never their credentials: they are write-only everywhere);
- operators: add, change and delete registries, like SSH credentials.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

GROUP_PERMISSIONS = {
    "viewers": ["view_registry"],
    "operators": ["view_registry", "add_registry", "change_registry", "delete_registry"],
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
    dependencies = [("clusters", "0014_audit_action_index")]

    operations = [migrations.RunPython(code=grant, reverse_code=migrations.RunPython.noop)]
