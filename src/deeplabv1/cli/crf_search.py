"""Placeholder for `deeplabv1 crf-search`: replaced by its owner."""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("crf-search", help="(not implemented yet)")
    p.set_defaults(func=lambda args: print("not implemented yet") or 1)
