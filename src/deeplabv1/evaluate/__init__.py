"""Evaluation: metrics, trimap bands, the evaluator, saved score maps, CRF search, reports.

Modules (import them directly; this package imports nothing heavy):
``metrics`` (confusion matrix, IoU, pixel accuracy), ``trimap`` (boundary bands),
``scores`` (saved coarse score maps), ``evaluator`` (the paper's test procedure over a split),
``crf_search`` (coarse-to-fine CRF cross-validation), ``tuning`` (the images it tunes on:
saved score maps or any model's image / score / label folders), ``report`` (JSON and Markdown),
``run`` (the ``eval`` / ``crf-search`` commands as functions), ``config`` (their settings).
"""
