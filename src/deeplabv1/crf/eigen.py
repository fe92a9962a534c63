"""Alias of :mod:`deeplabv1.crf.pydensecrf.eigen`, the drop-in for ``pydensecrf.eigen``."""

import sys

from deeplabv1.crf.pydensecrf import eigen

sys.modules[__name__] = eigen
