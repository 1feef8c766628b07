"""Drop the table of the former API tokens (Django REST framework's authtoken), which held them in plaintext.

Those tokens no longer authenticate: the portal's tokens are hashed, named and expire (``APIToken``). Users create
new ones (see the README). Nothing happens on a database that never had the table.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("clusters", "0005_job_worker_process_and_dispatch")]

    operations = [
        migrations.RunSQL(sql="DROP TABLE IF EXISTS authtoken_token", reverse_sql=migrations.RunSQL.noop),
    ]
