"""Shared pytest configuration: plugins providing the SSH test hosts and other cross-cutting fixtures."""

pytest_plugins = ["tests.testhosts.fixtures"]
