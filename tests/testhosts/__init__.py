"""SSH test hosts in network namespaces."""
