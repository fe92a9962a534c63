"""The fully connected CRF (Kraehenbuehl & Koltun 2011) of DeepLab V1, usable on its own.

- :func:`deeplab_crf`: the DeepLab convention (scores + RGB image -> marginals) in one call.
- :func:`mean_field` with :class:`PairwiseTerm`: general mean-field inference, batched, CPU/CUDA.
- :mod:`deeplabv1.crf.densecrf` / :mod:`deeplabv1.crf.utils`: a drop-in for pydensecrf
  (``from deeplabv1.crf import densecrf as dcrf``).
- :mod:`deeplabv1.crf.dense` (exact O(N^2) filter) and :mod:`deeplabv1.crf.lattice`
  (permutohedral lattice, O(N)).
"""

from deeplabv1.crf.deeplab import deeplab_crf, deeplab_terms
from deeplabv1.crf.features import bilateral_features, gaussian_features
from deeplabv1.crf.meanfield import NORMALIZATIONS, PairwiseTerm, mean_field, mean_field_step
from deeplabv1.crf.params import DEEPLAB_CRF_PARAMS, CRFParams, get_params

__all__ = [
    "DEEPLAB_CRF_PARAMS",
    "NORMALIZATIONS",
    "CRFParams",
    "PairwiseTerm",
    "bilateral_features",
    "deeplab_crf",
    "deeplab_terms",
    "gaussian_features",
    "get_params",
    "mean_field",
    "mean_field_step",
]
