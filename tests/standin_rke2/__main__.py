"""``python -m tests.standin_rke2 build DEST --version v1.31.4+rke2r1`` - write a stand-in airgap bundle."""

import argparse
import sys

from .build import ARCHES, KNOB_NAMES, BundleError, build_bundle


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.standin_rke2")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="write an airgap artifact directory")
    build.add_argument("dest", help="directory to write (created if missing)")
    build.add_argument("--version", required=True, help="rke2 version, e.g. v1.31.4+rke2r1")
    build.add_argument(
        "--arch", action="append", choices=ARCHES, help="architecture whose files are written (repeat; default amd64)"
    )
    for key in KNOB_NAMES:
        build.add_argument("--" + key.replace("_", "-"), type=float, default=None, metavar="SECONDS")
    args = parser.parse_args(argv)
    knobs = {key: getattr(args, key) for key in KNOB_NAMES}
    try:
        path = build_bundle(args.dest, args.version, arches=args.arch or ["amd64"], **knobs)
    except BundleError as exc:
        parser.error(str(exc))
    sys.stdout.write("%s\n" % path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
