"""The operations admin: clusters and their nodes, SSH credentials, lifecycle operations and live job logs.

Every change goes through the services (``clusters.services``); the admin parses input, calls a service and shows
its result or its error.
"""

from django.contrib import admin

from . import audit, clusters, credentials, hostkeys, jobs, nodes, registries, snapshots, tokens, webhooks  # noqa: F401  (registers the model admins)

admin.site.site_header = "RKE2 Portal"
admin.site.site_title = "RKE2 Portal"
admin.site.index_title = "Operations"
