"""The torch side of the dense CRF: tensors, CUDA, autograd and the CRF-as-RNN layer.

- :mod:`.meanfield`: ``mean_field`` and ``PairwiseTerm`` on tensors (batched, any device;
  on CPU tensors the work goes to the numba engine, :mod:`deeplabv1.crf.engine`);
- :mod:`.lattice` (the filter as an autograd function), :mod:`.build` and :mod:`.tables`
  (the sort-based lattice build that CUDA uses);
- :mod:`.dense`: the exact O(N^2) filter, the reference the lattice is tested against;
- :mod:`.layer` (``CRFLayer``), :mod:`.learned` and :mod:`.scaled_filter`: the CRF trained
  end to end;
- :mod:`.features`, :mod:`.terms`, :mod:`.unary`: feature spaces, prepared terms, unaries.

Needs PyTorch (``pip install "deeplabv1[torch]"``); importing it without says so.
"""

from deeplabv1.crf import require_torch

require_torch("deeplabv1.crf.torch")
