"""The ``fgp`` command line."""
import sys


def main(argv=None) -> int:
    print("fgp: not yet implemented", file=sys.stderr)
    return 2
