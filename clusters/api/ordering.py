"""``?ordering=`` and ``?search=`` on the list endpoints, with explicit fields.

A view declares ``ordering_fields`` (the names clients may sort by, or a mapping of them to ORM lookups) and ``search_fields`` (the columns ``search``
looks in, case-insensitively). Sorting by a field that is not allowed is a 400 naming the field, never silently
ignored; the primary key is always appended as a tie-breaker, so that pages stay stable.
"""

from __future__ import annotations

from typing import Any

from django_filters.rest_framework import DjangoFilterBackend
from rest_framework.exceptions import ValidationError
from rest_framework.filters import OrderingFilter, SearchFilter

__all__ = ["LIST_FILTERS", "StrictOrderingFilter", "StrictSearchFilter"]

MAX_SEARCH_CHARS = 200


class StrictOrderingFilter(OrderingFilter):
    """DRF's ordering filter, refusing unknown fields: ``{"errors": {"ordering": ["... 'x' ..."]}}``."""

    def remove_invalid_fields(self, queryset: Any, fields: list[str], view: Any, request: Any) -> list[str]:
        allowed = {name for name, _label in self.get_valid_fields(queryset, view, {"request": request})}
        unknown = [term for term in fields if term.lstrip("-") not in allowed]
        if unknown:
            choices = ", ".join(sorted(allowed))
            raise ValidationError(
                {self.ordering_param: [f"Cannot sort by {unknown[0].lstrip('-')!r}; allowed fields: {choices}."]}
            )
        return fields

    def get_ordering(self, request: Any, queryset: Any, view: Any) -> Any:
        params = request.query_params.get(self.ordering_param)
        if params is None:
            return None  # keep the queryset's own order
        fields = [param.strip() for param in params.split(",") if param.strip()]
        if not fields:
            raise ValidationError({self.ordering_param: ["Name at least one field to sort by."]})
        fields = self.remove_invalid_fields(queryset, fields, view, request)
        lookups = _lookups(view)
        ordering = [("-" if field.startswith("-") else "") + lookups[field.lstrip("-")] for field in fields]
        if not any(field.lstrip("-") in ("pk", "id") for field in ordering):
            ordering.append("-pk" if ordering[0].startswith("-") else "pk")
        return ordering

    def get_valid_fields(
        self, queryset: Any, view: Any, context: dict[str, Any] | None = None
    ) -> list[tuple[str, str]]:
        return [(name, name) for name in _lookups(view)]


def _lookups(view: Any) -> dict[str, str]:
    """Public sort names to ORM lookups: ``ordering_fields`` is a sequence of names or a mapping of them."""
    fields = getattr(view, "ordering_fields", ())
    return dict(fields) if isinstance(fields, dict) else {name: name for name in fields}


class StrictSearchFilter(SearchFilter):
    """DRF's search filter (every word must match one of ``search_fields``), bounded in length."""

    def get_search_terms(self, request: Any) -> list[str]:
        value = request.query_params.get(self.search_param, "")
        if len(value) > MAX_SEARCH_CHARS:
            raise ValidationError({self.search_param: [f"Search for at most {MAX_SEARCH_CHARS} characters."]})
        return super().get_search_terms(request)


# The filter backends of a list endpoint: django-filter's fields, then search, then ordering.
LIST_FILTERS = (DjangoFilterBackend, StrictSearchFilter, StrictOrderingFilter)
