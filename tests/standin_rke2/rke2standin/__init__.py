"""Stand-in for the ``rke2`` binary, used by the integration test hosts.

The package is shipped as a zipapp at ``bin/rke2`` inside the stand-in tarball and runs on the target's
system Python (stdlib only).  See ``tests/standin_rke2/README.md``.
"""
