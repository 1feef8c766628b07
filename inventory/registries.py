"""Preview of the ``registries.yaml`` the nodes get, rendered from the same template and variable the playbooks use
(``ansible/templates/registries.yaml.j2``, ``rke2_registries``), credentials masked unless revealed."""

from __future__ import annotations

from clusters.fields import reveal
from clusters.registries import registries_document, registries_variable

from .configs import jinja_environment
from .variables import ClusterSnapshot

__all__ = ["REGISTRIES_TEMPLATE", "render_registries"]

REGISTRIES_TEMPLATE = "registries.yaml.j2"


def _revealed(value: object) -> object:
    if isinstance(value, dict):
        return {key: _revealed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_revealed(item) for item in value]
    return reveal(value) if isinstance(value, str) else value


def render_registries(snapshot: ClusterSnapshot, reveal_secrets: bool = False) -> str:
    """The ``registries.yaml`` text of the snapshot's cluster ("" when it has no registry: no file is written).
    Credentials show as ``********`` unless ``reveal_secrets``. No query."""
    document = registries_document(snapshot.registries or (), mask=not reveal_secrets)
    if not document:
        return ""
    if reveal_secrets:
        document = _revealed(document)  # type: ignore[assignment]
    variable = registries_variable(document)
    return jinja_environment().get_template(REGISTRIES_TEMPLATE).render({"rke2_registries": variable})
