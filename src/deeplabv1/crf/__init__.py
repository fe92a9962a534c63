"""The fully connected CRF (Kraehenbuehl & Koltun 2011) of DeepLab V1, usable on its own.

- :func:`deeplab_crf`: the DeepLab convention (scores + RGB image -> marginals) in one call;
  :func:`deeplab_crf_np` the same on numpy arrays without torch (``deeplab.py``, with the
  parameter sets of ``params.py``).
- ``deeplabv1.crf.densecrf`` / ``.utils`` / ``.eigen``: a drop-in for pydensecrf
  (``import deeplabv1.crf.densecrf as dcrf``), the package ``pydensecrf/``.
- ``engine/``: the CPU engine, numpy + numba kernels, never torch (the drop-in,
  ``deeplab_crf_np`` and ``deeplabv1 crf`` run on it); :func:`set_num_threads` /
  :func:`get_num_threads` its threads.
- ``torch/``: tensors, CUDA, autograd, :class:`CRFLayer` (CRF-as-RNN) and the exact O(N^2)
  reference filter :class:`DenseFilter`; :func:`mean_field` with :class:`PairwiseTerm` is
  general batched mean-field inference.

The names are imported lazily (module ``__getattr__``), so that importing the drop-in does not
import torch. Module paths of earlier versions (``deeplabv1.crf.layer``, ``.lattice``,
``.meanfield``, ...) still import, as the modules they moved to (``_MOVED``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

# public name -> defining module
_LAZY = {
    "DEEPLAB_CRF_PARAMS": "params",
    "CRFParams": "params",
    "get_params": "params",
    "deeplab_crf": "deeplab",
    "deeplab_crf_np": "deeplab",
    "deeplab_features": "deeplab",
    "deeplab_terms": "deeplab",
    "get_num_threads": "engine.threads",
    "set_num_threads": "engine.threads",
    # the torch side
    "NORMALIZATIONS": "torch.meanfield",
    "PairwiseTerm": "torch.meanfield",
    "mean_field": "torch.meanfield",
    "mean_field_step": "torch.meanfield",
    "bilateral_features": "torch.features",
    "gaussian_features": "torch.features",
    "PermutohedralLattice": "torch.lattice",
    "DenseFilter": "torch.dense",
    "CRFLayer": "torch.layer",
    "LearnedCRFParams": "torch.learned",
    "crf_params_from_checkpoint": "torch.learned",
    "unary_from_labels": "torch.unary",
    "unary_from_logits": "torch.unary",
    "unary_from_probabilities": "torch.unary",
}

# earlier module path (under deeplabv1.crf) -> the module it is now
_MOVED = {
    "layer": "torch.layer",
    "learned": "torch.learned",
    "lattice": "torch.lattice",
    "lattice_build": "torch.build",
    "lattice_index": "torch.tables",
    "meanfield": "torch.meanfield",
    "terms": "torch.terms",
    "unary": "torch.unary",
    "dense": "torch.dense",
    "scaled_filter": "torch.scaled_filter",
    "numpy_meanfield": "engine.meanfield",
    # its thread functions (available, set_num_threads, ...), which callers such as the batch
    # mode's workers use; the lattice itself is now engine.lattice / engine.cache
    "numpy_lattice": "engine.threads",
}

__all__ = sorted(_LAZY)


def require_torch(what: str):
    """The torch module, or a ModuleNotFoundError saying that ``what`` needs it and which
    extra installs it (the CRF's numpy engine does not need torch)."""
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        raise ModuleNotFoundError(
            f'{what} needs PyTorch, which is not installed: pip install "deeplabv1[torch]"',
            name="torch",
        ) from exc


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'deeplabv1.crf' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"deeplabv1.crf.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _MovedModules:
    """Imports ``deeplabv1.crf.<old>`` as the module it moved to (the same module object): a
    meta-path finder and loader (importlib's protocols; importlib.abc costs 35 ms to import)."""

    def find_spec(self, fullname, path=None, target=None):
        old = fullname.removeprefix(__name__ + ".")
        if fullname.startswith(__name__ + ".") and old in _MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(f"{__name__}.{_MOVED[spec.name.rsplit('.', 1)[1]]}")

    def exec_module(self, module) -> None:
        pass  # already executed under its own name


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())
