"""Shared pytest configuration: plugins providing test hosts, services and the stand-in RKE2."""

pytest_plugins = ["tests.testhosts.fixtures"]
