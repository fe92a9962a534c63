"""Alias of :mod:`deeplabv1.crf.pydensecrf.densecrf`, the drop-in for ``pydensecrf.densecrf``."""

import sys

from deeplabv1.crf.pydensecrf import densecrf

sys.modules[__name__] = densecrf
