"""Let the default groups see the stored SSH host keys, and operators clear one.

- viewers and operators: view host keys;
- operators: delete (clear) a host key, so that the next job accepts the key the host presents.

Every user manages their own API tokens; that needs no model permission.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

GROUP_PERMISSIONS = {
    "viewers": ["view_hostkey"],
    "operators": ["view_hostkey", "delete_hostkey"],
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
    dependencies = [("clusters", "0003_host_keys_and_api_tokens")]

    operations = [migrations.RunPython(code=grant, reverse_code=migrations.RunPython.noop)]
