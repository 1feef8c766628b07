from clusters.tests.test_admin import *  # noqa

def test_dbg(admin_client, installed):
    data = cluster_post_data(installed)
    for field in ("rke2_version", "cni", "cluster_cidr", "service_cidr", "cluster_dns", "cluster_domain"):
        data.pop(field)
    data["cluster_nodes-4-DELETE"] = "on"
    print({k: v for k, v in data.items() if k.startswith("cluster_nodes-4")})
    response = admin_client.post(change_url(installed), data)
    print(response.status_code, list(installed.cluster_nodes.values_list("hostname", "status")))

def test_dbg2(admin_client):
    key = ssh_private_key(passphrase="s3cret-phrase")
    add = reverse("admin:clusters_sshcredential_add")
    response = admin_client.post(add, {"name": "ops", "username": "root", "port": 22, "private_key": key, "passphrase": "s3cret-phrase", "known_hosts": ""})
    credential = SSHCredential.objects.get(name="ops")
    change = reverse("admin:clusters_sshcredential_change", args=[credential.pk])
    response = admin_client.post(change, {"name": "ops", "username": "deploy", "port": 2222, "become": "on", "private_key": "", "passphrase": "", "known_hosts": ""})
    print(response.context["adminform"].form.errors)
