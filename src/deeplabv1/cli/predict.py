"""Placeholder for `deeplabv1 predict`: replaced by its owner."""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("predict", help="(not implemented yet)")
    p.set_defaults(func=lambda args: print("not implemented yet") or 1)
