"""Services: every change to clusters, nodes, credentials and jobs goes through these functions."""
