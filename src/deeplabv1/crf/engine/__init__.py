"""The CPU engine of the dense CRF: numpy arrays and numba-compiled kernels, never torch.

- :mod:`.lattice`: the permutohedral lattice (build, cache, filter) on numpy arrays;
- :mod:`.meanfield`: mean-field inference over lattice terms (Potts, diagonal and matrix
  compatibilities), one fused pass over the pixels per iteration;
- :mod:`.kernels`: the numba kernels both run.

The pydensecrf drop-in, ``deeplab_crf_np`` and ``deeplabv1 crf`` run on it; the torch side
(:mod:`deeplabv1.crf.torch`) hands CPU tensors to it too.
"""
