"""The DeepLab CRF parameters per network variant (the paper's cross-validated values).

Energy weights and standard deviations of the two Potts terms:
w1 / sa / sb for the bilateral (appearance) kernel and w2 / sg for the Gaussian (smoothness)
kernel. The paper's cross-validated values:

    DeepLab               5 / 50 / 10 ; 3 / 3   (the paper notes it was "not optimised well")
    DeepLab-MSc           3 / 95 / 3  ; 3 / 3
    DeepLab-LargeFOV      4 / 121 / 5 ; 3 / 3
    DeepLab-MSc-LargeFOV  4 / 83 / 5  ; 3 / 3   (less certain)

DeepLab-7x7 and DeepLab-4x4 have no published CRF values. We give them the LargeFOV values
(same 224-pixel fc6 footprint and output stride; LargeFOV's are the best documented): a
documented choice, not a published number. Re-tune with ``deeplabv1 crf-search``.

``RELEASE_CRF_PARAMS``: the other sets in the authors' files, by name with their source
(``get_params("largefov-run-densecrf")``); the per-variant values above stay the defaults.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = [
    "DEEPLAB_CRF_PARAMS",
    "PUBLISHED_VARIANTS",
    "RELEASE_CRF_PARAMS",
    "CRFParams",
    "get_params",
    "std_problem",
    "variant_problem",
    "weight_problem",
]


@dataclass(frozen=True)
class CRFParams:
    """Dense-CRF parameters in DeepLab's naming (pixels for sa / sg, 0-255 colours for sb)."""

    w1: float  # bilateral (appearance) Potts weight
    sa: float  # bilateral position standard deviation
    sb: float  # bilateral colour standard deviation
    w2: float  # Gaussian (smoothness) Potts weight
    sg: float  # Gaussian position standard deviation

    def __post_init__(self) -> None:
        for name in ("w1", "sa", "sb", "w2", "sg"):
            check = weight_problem if name in ("w1", "w2") else std_problem
            problem = check(getattr(self, name))
            if problem is not None:
                raise ValueError(f"CRFParams.{name}: {problem}")

    def to_dict(self) -> dict:
        return asdict(self)


def std_problem(value: float) -> str | None:
    """Why ``value`` cannot be a kernel standard deviation (sa, sb, sg: a positive, finite
    number), or None."""
    if value > 0 and value < float("inf"):
        return None
    return f"must be a positive number (a standard deviation), got {value}"


def weight_problem(value: float) -> str | None:
    """Why ``value`` cannot be a kernel weight (w1, w2: a finite number), or None."""
    return None if abs(value) < float("inf") else f"must be a finite number, got {value}"


def variant_problem(name: str) -> str | None:
    """Why ``get_params`` does not know the parameter set ``name``, or None."""
    known = {**DEEPLAB_CRF_PARAMS, **RELEASE_CRF_PARAMS}
    if str(name).lower() in known:
        return None
    return f"unknown variant {name!r}; expected one of {', '.join(sorted(known))}"


_LARGEFOV = CRFParams(w1=4, sa=121, sb=5, w2=3, sg=3)

DEEPLAB_CRF_PARAMS: dict[str, CRFParams] = {
    "deeplab": CRFParams(w1=5, sa=50, sb=10, w2=3, sg=3),
    "deeplab-msc": CRFParams(w1=3, sa=95, sb=3, w2=3, sg=3),
    "deeplab-largefov": _LARGEFOV,
    "deeplab-msc-largefov": CRFParams(w1=4, sa=83, sb=5, w2=3, sg=3),
    # no published values: LargeFOV's, see the module docstring
    "deeplab-7x7": _LARGEFOV,
    "deeplab-4x4": _LARGEFOV,
}

PUBLISHED_VARIANTS = ("deeplab", "deeplab-msc", "deeplab-largefov", "deeplab-msc-largefov")

# Other values found in the authors' release files (never a default; see docs/crf.md):
RELEASE_CRF_PARAMS: dict[str, CRFParams] = {
    # exper/run_densecrf.sh (MODEL_NAME deelab_largeFOV): -bw 4 -bx/-by 49 -br/-bg/-bb 5, 3 / 3
    "largefov-run-densecrf": CRFParams(w1=4, sa=49, sb=5, w2=3, sg=3),
    # the DENSE_CRF layer of the LargeFOV / MSc-LargeFOV test prototxts (commented out there);
    # also the defaults set before the loops of run_densecrf_grid_search.sh
    "test-prototxt-dense-crf": CRFParams(w1=5, sa=50, sb=10, w2=3, sg=3),
    # the one point the released run_densecrf_grid_search.sh evaluates (its ranges: 4, 51, 5)
    "largefov-grid-search-script": CRFParams(w1=4, sa=51, sb=5, w2=3, sg=3),
}


def get_params(params: str | CRFParams) -> CRFParams:
    """CRFParams by variant name (case-insensitive) or passed through."""
    if isinstance(params, CRFParams):
        return params
    key = str(params).lower()
    known = {**DEEPLAB_CRF_PARAMS, **RELEASE_CRF_PARAMS}
    if key not in known:
        raise ValueError(f"CRF params: unknown variant {params!r}; expected one of {sorted(known)}")
    return known[key]
