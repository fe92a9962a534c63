"""``deeplabv1 paper-table``: our eval results side by side with the paper's mean IoU.

    deeplabv1 paper-table eval/deeplab/results.json eval/largefov/results.json
    deeplabv1 paper-table eval/*/            # folders holding a results.json

Prints a Markdown table (method as the paper names it, split, images, ours, paper, difference).
"""

from __future__ import annotations


def add_parser(subparsers) -> None:
    """Register ``paper-table``."""
    p = subparsers.add_parser(
        "paper-table", help="compare eval results.json files with the paper's numbers",
        description="Print a Markdown table of `deeplabv1 eval` results next to the mean IoU "
        "published in the paper (VOC 2012 val and test).",
    )  # fmt: skip
    p.add_argument("results", nargs="+", help="results.json files (or folders holding one)")
    p.set_defaults(func=run)


def run(args) -> int:
    """Print the table."""
    from deeplabv1.evaluate.paper import paper_table

    print(paper_table(args.results), end="")
    return 0
