"""Stand-in RKE2 for integration tests: an airgap bundle that installs and behaves like RKE2 on test hosts.

See README.md in this directory.  Entry point: :func:`tests.standin_rke2.build.build_bundle`.
"""
