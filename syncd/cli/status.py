"""`syncd status`."""

from __future__ import annotations


def register(sub, parent) -> None:
    p = sub.add_parser("status", parents=[parent], help="(not yet available)")
    p.set_defaults(func=main)


def main(args) -> int:
    print("syncd status: not yet available")
    return 3
