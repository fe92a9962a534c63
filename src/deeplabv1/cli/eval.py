"""Placeholder for `deeplabv1 eval`: replaced by its owner."""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("eval", help="(not implemented yet)")
    p.set_defaults(func=lambda args: print("not implemented yet") or 1)
