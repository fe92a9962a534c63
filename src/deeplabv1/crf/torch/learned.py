"""CRF parameters learned end to end (CRFLayer): the checkpoint's ``crf`` entry and its reader.

A learned CRF is an ordinary dense CRF whose two terms share one symmetric label
compatibility matrix mu (L, L) (energies; Potts = 1 - I) scaled by the per-term weights:
the bilateral term has compatibility w1 * mu, the Gaussian term w2 * mu. The inference engine
(``deeplab_terms`` / ``mean_field``) runs it as two matrix-compatibility PairwiseTerms, so
``eval`` and ``predict`` need nothing else.

Checkpoint entry (``ckpt["crf"]``, plain data + one tensor, readable with weights_only=True)::

    {"w1", "sa", "sb", "w2", "sg": floats, "compat": (L, L) float32 tensor,
     "normalization": "after", "iters": 10, "kind": "end-to-end"}

Older entries (a variant name or a dict of the five CRFParams fields, e.g. from crf-search)
read as plain :class:`CRFParams`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deeplabv1.crf.params import CRFParams, get_params

__all__ = ["LearnedCRFParams", "crf_params_from_checkpoint"]

_FIELDS = ("w1", "sa", "sb", "w2", "sg")


@dataclass(frozen=True)
class LearnedCRFParams(CRFParams):
    """CRFParams plus a learned symmetric label compatibility (energies, nested tuples)."""

    compat: tuple[tuple[float, ...], ...] = ()
    normalization: str = "after"

    def __post_init__(self) -> None:
        super().__post_init__()
        n = len(self.compat)
        if n < 2 or any(len(row) != n for row in self.compat):
            raise ValueError(f"LearnedCRFParams.compat: expected an (L, L) matrix, L >= 2, got {n}")

    @property
    def num_classes(self) -> int:
        return len(self.compat)

    def compat_matrix(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """The compatibility as an (L, L) tensor."""
        return torch.tensor(self.compat, dtype=dtype, device=device)

    def term_compats(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(bilateral, Gaussian) compatibilities: w1 * mu and w2 * mu."""
        mu = self.compat_matrix(device)
        return self.w1 * mu, self.w2 * mu


def crf_params_from_checkpoint(entry, source: str = "checkpoint"):
    """CRFParams / LearnedCRFParams from a checkpoint's ``crf`` entry (name, dict or None).

    Raises ValueError naming ``source`` and the problem for a malformed entry.
    """
    if entry is None or isinstance(entry, CRFParams):
        return entry
    try:
        if isinstance(entry, str):
            return get_params(entry)
        if not isinstance(entry, dict):
            raise ValueError(f"expected a variant name or a dict, got {type(entry).__name__}")
        base = {k: float(entry[k]) for k in _FIELDS}
        if entry.get("compat") is None:
            return CRFParams(**base)
        mu = torch.as_tensor(entry["compat"], dtype=torch.float64)
        if mu.dim() != 2 or mu.shape[0] != mu.shape[1] or not bool(torch.isfinite(mu).all()):
            raise ValueError(f"compat must be a finite (L, L) matrix, got {tuple(mu.shape)}")
        mu = 0.5 * (mu + mu.T)
        compat = tuple(tuple(float(x) for x in row) for row in mu.tolist())
        return LearnedCRFParams(**base, compat=compat,
                                normalization=str(entry.get("normalization", "after")))  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{source}: bad 'crf' entry ({type(exc).__name__}: {exc})") from exc
