"""`syncd resync`."""

from __future__ import annotations


def register(sub, parent) -> None:
    p = sub.add_parser("resync", parents=[parent], help="(not yet available)")
    p.set_defaults(func=main)


def main(args) -> int:
    print("syncd resync: not yet available")
    return 3
