from django.contrib import admin

from .models import AuditLog, Cluster, Job, JobEvent, JobHostSummary, Node, SSHCredential


class NodeInline(admin.TabularInline):
    model = Node
    extra = 0
    fields = ("hostname", "internal_ip", "external_ip", "use_external_ip", "role", "status")
    readonly_fields = ("status",)


@admin.register(Cluster)
class ClusterAdmin(admin.ModelAdmin):
    list_display = ("name", "rke2_version", "status", "installation_stage")
    search_fields = ("name", "description")
    inlines = [NodeInline]


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ("hostname", "cluster", "role", "status", "internal_ip")
    list_filter = ("role", "status")


@admin.register(SSHCredential)
class SSHCredentialAdmin(admin.ModelAdmin):
    list_display = ("name", "username", "port", "become", "public_key_fingerprint")
    exclude = ("private_key", "passphrase")


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("pk", "cluster", "kind", "status", "created_at")
    list_filter = ("kind", "status")


admin.site.register(JobEvent)
admin.site.register(JobHostSummary)
admin.site.register(AuditLog)
