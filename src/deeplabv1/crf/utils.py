"""Alias of :mod:`deeplabv1.crf.pydensecrf.utils`, the drop-in for ``pydensecrf.utils``."""

import sys

from deeplabv1.crf.pydensecrf import utils

sys.modules[__name__] = utils
