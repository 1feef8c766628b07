"""Pagination of every list endpoint."""

from __future__ import annotations

from django.conf import settings
from rest_framework.pagination import PageNumberPagination

__all__ = ["StandardPagination"]


class StandardPagination(PageNumberPagination):
    """``?page=N&page_size=M``: ``{"count", "next", "previous", "results"}``; at most 500 items a page."""

    page_size = settings.REST_FRAMEWORK.get("PAGE_SIZE") or 50
    page_size_query_param = "page_size"
    max_page_size = 500
