"""Helpers shared by the model admins: showing service errors and rendering status badges."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from ..exceptions import ApplicationError, JobConflict

__all__ = [
    "SERVICE_ERRORS",
    "ClusterListFilter",
    "ServiceErrorsMixin",
    "ServiceRejected",
    "badge",
    "error_text",
    "job_url",
    "message_service_error",
]

# What a service raises when it refuses a request; anything else is a bug and propagates.
SERVICE_ERRORS = (ApplicationError, ValidationError)

# Status → colour class of the badges (see clusters/static/clusters/admin/portal.css).
_TONES = {
    "active": "ok",
    "successful": "ok",
    "complete": "ok",
    "running": "busy",
    "installing": "busy",
    "upgrading": "busy",
    "scaling": "busy",
    "uninstalling": "busy",
    "draining": "busy",
    "pending": "wait",
    "new": "wait",
    "not_started": "wait",
    "initial_master": "busy",
    "joining_masters": "busy",
    "workers": "busy",
    "all": "busy",
    "failed": "bad",
    "degraded": "warn",
    "canceled": "muted",
    "uninstalled": "muted",
    "removed": "muted",
}


def badge(value: str, label: str | None = None) -> SafeString:
    """A coloured status label."""
    tone = _TONES.get(str(value), "muted")
    return format_html('<span class="rke2-badge rke2-badge-{}" data-status="{}">{}</span>', tone, value, label or value)


def job_url(job: Any) -> str:
    return reverse("admin:clusters_job_change", args=[job.pk])


def error_text(exc: BaseException) -> str:
    """A service error as one line of text (field names included)."""
    if isinstance(exc, ApplicationError):
        return exc.message
    if isinstance(exc, ValidationError):
        if hasattr(exc, "error_dict"):
            parts = []
            for field, field_messages in exc.message_dict.items():
                prefix = "" if field == NON_FIELD_ERRORS else f"{field.replace('_', ' ')}: "
                parts.extend(f"{prefix}{message}" for message in field_messages)
            return " ".join(parts)
        return " ".join(exc.messages)
    return str(exc)


def message_service_error(request: HttpRequest, exc: BaseException, *, subject: str = "") -> None:
    """Show a refused request as an error message; a conflicting job is linked."""
    text = f"{subject}: {error_text(exc)}" if subject else error_text(exc)
    if isinstance(exc, JobConflict) and exc.job is not None:
        messages.error(request, format_html('{} <a href="{}">Follow the active job</a>.', text, job_url(exc.job)))
    else:
        messages.error(request, text)


class ServiceRejected(Exception):
    """A service refused to save a change page; carries its field-keyed errors for the form to show."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(errors)
        self.errors = errors


class ServiceErrorsMixin:
    """Change pages that save through services.

    Forms validate what they can; the service validates again when saving, against the database as it is then.
    When it refuses (``save_model``/``save_related`` raise :class:`ServiceRejected`), the transaction of the page is
    rolled back and the same submission is shown again with the service's errors next to the fields they name:
    the form class gets them as ``service_errors`` and adds them in ``clean()``.
    """

    def changeform_view(
        self,
        request: HttpRequest,
        object_id: str | None = None,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> Any:
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)  # type: ignore[misc]
        except ServiceRejected as exc:
            request.service_errors = exc.errors  # type: ignore[attr-defined]
            return super().changeform_view(request, object_id, form_url, extra_context)  # type: ignore[misc]

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        form_class = super().get_form(request, obj, change, **kwargs)  # type: ignore[misc]
        errors = getattr(request, "service_errors", None)
        if errors:
            form_class = type(form_class.__name__, (form_class,), {"service_errors": errors})
        return form_class

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None) -> Any:
        """A deletion the service refuses (``delete_model`` raises) is a message on the object's page, not a 500."""
        try:
            return super().delete_view(request, object_id, extra_context)  # type: ignore[misc]
        except SERVICE_ERRORS as exc:
            opts = self.model._meta  # type: ignore[attr-defined]
            message_service_error(request, exc, subject=f"The {opts.verbose_name} was not deleted")
            return HttpResponseRedirect(reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[object_id]))


class ClusterListFilter(admin.RelatedFieldListFilter):
    """The cluster filter of a changelist: the first ``max_choices`` clusters by name, and the one selected.

    Listing every cluster (or every cluster that has rows, which scans the listed table) would cost more than
    the page itself once there are thousands; any cluster can still be chosen from its own page or by searching
    its name. Only names are read: no cluster row (and no encrypted column) is loaded."""

    max_choices = 30

    def field_choices(self, field: Any, request: HttpRequest, model_admin: Any) -> list[tuple[Any, str]]:
        clusters = field.remote_field.model._default_manager.order_by("name", "pk")
        choices = list(clusters.values_list("pk", "name")[: self.max_choices])
        selected = [value for value in (self.lookup_val or []) if str(value).isdigit()]
        shown = {str(pk) for pk, _name in choices}
        missing = [value for value in selected if value not in shown]
        if missing:
            choices += list(clusters.filter(pk__in=missing).values_list("pk", "name"))
        return choices
