"""Create the portal's default groups and grant them their model permissions.

- viewers: read clusters, nodes, jobs, job events and SSH credentials (never a secret);
- operators: everything viewers may, plus change clusters, nodes and SSH credentials, request jobs (add) and
  cancel them (change), and read the audit log;
- kubeconfig-downloaders: download kubeconfigs (and see the clusters they download them from).

Permissions are normally created after ``migrate`` has run every migration, so they are created here first.
Existing groups keep any permission granted by hand.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

GROUP_PERMISSIONS = {
    "viewers": [
        "view_cluster",
        "view_node",
        "view_sshcredential",
        "view_job",
        "view_jobevent",
        "view_jobhostsummary",
    ],
    "operators": [
        "view_cluster",
        "add_cluster",
        "change_cluster",
        "delete_cluster",
        "view_node",
        "add_node",
        "change_node",
        "delete_node",
        "view_sshcredential",
        "add_sshcredential",
        "change_sshcredential",
        "delete_sshcredential",
        "view_job",
        "add_job",
        "change_job",
        "view_jobevent",
        "view_jobhostsummary",
        "view_auditlog",
    ],
    "kubeconfig-downloaders": [
        "view_cluster",
        "download_kubeconfig",
    ],
}


def create_default_groups(apps, schema_editor):
    alias = schema_editor.connection.alias
    app_config = apps.get_app_config("clusters")
    # Historical app configs have no models module, which create_permissions takes as "no models".
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
    dependencies = [
        ("clusters", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.RunPython(code=create_default_groups, reverse_code=migrations.RunPython.noop),
    ]
