"""Who may call what: each view names the model permissions its actions need.

Permissions come from Django's model permissions, granted through groups (created by migration
``0002_default_groups``): ``viewers`` read everything except secrets, ``operators`` also change clusters, nodes and
credentials and request and cancel jobs, ``kubeconfig-downloaders`` may download kubeconfigs
(``clusters.download_kubeconfig``). Superusers may do everything. Anonymous requests get 401.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

__all__ = ["DEFAULT_ACTIONS", "ActionPermissions"]

# Permission verbs of the standard viewset actions, on the view's model.
DEFAULT_ACTIONS: Mapping[str, str] = {
    "list": "view",
    "retrieve": "view",
    "create": "add",
    "update": "change",
    "partial_update": "change",
    "destroy": "delete",
}


class ActionPermissions(BasePermission):
    """Allows a request when the user holds every permission the view requires for the action.

    A view declares ``action_permissions`` (action name to permission names); standard actions it does not list
    need ``<app>.<verb>_<model>`` of the view's ``permission_model``. Any other action is refused, so a new action
    without declared permissions is closed rather than open.
    """

    message = "You do not have permission to perform this action."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not user or not user.is_authenticated:
            return False
        if getattr(view, "action", None) is None:
            return True  # a method the endpoint does not have: the view answers 405
        required = self.required_permissions(view)
        return required is not None and user.has_perms(required)

    @staticmethod
    def required_permissions(view: Any) -> Sequence[str] | None:
        action = getattr(view, "action", None)
        declared: Mapping[str, Sequence[str]] = getattr(view, "action_permissions", {})
        if action in declared:
            return declared[action]
        verb = DEFAULT_ACTIONS.get(action or "")
        model = getattr(view, "permission_model", None)
        if verb is None or model is None:
            return None
        return [f"{model._meta.app_label}.{verb}_{model._meta.model_name}"]
