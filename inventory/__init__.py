"""Rendering of Ansible inventories, variables and RKE2 node configurations from the cluster domain model.

Pure rendering: models in, mappings and text out. Nothing here writes files, runs Ansible or changes the
database. The entry points are in :mod:`inventory.renderers`.
"""
