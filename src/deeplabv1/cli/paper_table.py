"""``deeplabv1 paper-table``: our eval results side by side with the paper's mean IoU.

    deeplabv1 paper-table eval/deeplab/results.json eval/largefov/results.json
    deeplabv1 paper-table eval/*/            # folders holding a results.json

Prints a Markdown table (method as the paper names it, split, images, ours, paper, difference,
CRF parameters, results files) of the results like the paper's (VOC 2012's 21 classes, full
width, test size 513 with the released test network, the variant's published CRF set with 10
iterations), one row per network and method; the others follow in a second table with the
reasons they are not comparable.
"""

from __future__ import annotations


def add_parser(subparsers) -> None:
    """Register ``paper-table``."""
    p = subparsers.add_parser(
        "paper-table", help="compare eval results.json files with the paper's numbers",
        description="Print a Markdown table of `deeplabv1 eval` results next to the mean IoU "
        "published in the paper (VOC 2012 val and test). Only results like the paper's are set "
        "beside its numbers (VOC 2012's 21 classes, full width, test size 513 with the released "
        "test network, the variant's published CRF set with 10 iterations); the others are "
        "listed apart with the reasons. A network evaluated in several folders is one row.",
    )  # fmt: skip
    p.add_argument("results", nargs="+", help="results.json files (or folders holding one)")
    p.set_defaults(func=run)


def run(args) -> int:
    """Print the table."""
    from deeplabv1.evaluate.paper import paper_table

    print(paper_table(args.results), end="")
    return 0
