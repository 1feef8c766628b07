"""Preview of the RKE2 ``config.yaml`` a node gets, rendered exactly as Ansible's ``template`` module renders it.

The same template files (``ansible/templates/config_*.yaml.j2``), the same variables (those the inventory and the
extravars file give Ansible) and the same filter functions (``combine`` and ``to_nice_yaml`` are ansible-core's
own), so the preview is byte for byte the file Ansible writes. The Jinja2 environment matches the ``template``
module's defaults where they matter (``trim_blocks``, kept trailing newline, no autoescaping) and is strict about
undefined variables.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from clusters.choices import NodeRole
from clusters.fields import MASK, reveal
from clusters.models import Node

from .variables import ClusterSnapshot

__all__ = ["CONFIG_TEMPLATES", "config_template_name", "render_node_config", "template_context", "templates_dir"]

_DEFAULT_ANSIBLE_DIR = Path(__file__).resolve().parent.parent / "ansible"

# Template of each node role (the roles' ``template`` tasks use the same files).
CONFIG_TEMPLATES = {
    NodeRole.INITIAL_MASTER.value: "config_initial_master.yaml.j2",
    NodeRole.MASTER.value: "config_joining_master.yaml.j2",
    NodeRole.WORKER.value: "config_worker.yaml.j2",
}


def config_template_name(role: str) -> str:
    try:
        return CONFIG_TEMPLATES[str(role)]
    except KeyError:
        raise ValueError(f"No config template for node role {role!r}.") from None


def templates_dir() -> Path:
    """``templates/`` of the Ansible content the playbooks run from (``settings.ANSIBLE_DIR``)."""
    from django.conf import settings

    return Path(getattr(settings, "ANSIBLE_DIR", _DEFAULT_ANSIBLE_DIR)) / "templates"


def jinja_environment() -> jinja2.Environment:
    """Jinja2 environment for the config templates, with ansible-core's filters and tests (Jinja2's built-in ones
    are kept where Ansible only re-implements them)."""
    return _environment(str(templates_dir()))


@lru_cache(maxsize=4)
def _environment(directory: str) -> jinja2.Environment:
    from ansible.plugins.filter.core import FilterModule
    from ansible.plugins.filter.mathstuff import FilterModule as MathFilterModule
    from ansible.plugins.test.core import TestModule

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=False,
        auto_reload=False,
    )
    for source in (FilterModule().filters(), MathFilterModule().filters()):
        for name, function in source.items():
            environment.filters.setdefault(name, function)
    for name, function in TestModule().tests().items():
        environment.tests.setdefault(name, function)
    return environment


def template_context(node: Node, snapshot: ClusterSnapshot, *, reveal_secrets: bool = False) -> dict[str, Any]:
    """The variables a config template sees for ``node``: cluster vars, then its host vars (host vars win, as in
    Ansible), with the token revealed or masked."""
    context = snapshot.cluster_vars()
    context.update(snapshot.node_vars(node))
    context["rke2_token"] = reveal(context["rke2_token"]) if reveal_secrets else MASK
    return context


def render_node_config(node: Node, reveal_secrets: bool = False, *, snapshot: ClusterSnapshot | None = None) -> str:
    """The ``config.yaml`` text Ansible writes for ``node``; the token is masked unless ``reveal_secrets``.

    Two queries, or none with a ``snapshot`` of the node's cluster (use one to preview many nodes)."""
    if snapshot is None:
        snapshot = ClusterSnapshot.load(node.cluster)
    own = next((item for item in snapshot.nodes if item.pk == node.pk), node) if node.pk else node
    template = jinja_environment().get_template(config_template_name(own.role))
    return template.render(template_context(own, snapshot, reveal_secrets=reveal_secrets))
