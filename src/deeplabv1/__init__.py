"""DeepLab V1 (Chen et al., ICLR 2015): atrous VGG16 at output stride 8 plus a dense CRF."""

from deeplabv1.errors import DeepLabError

__version__ = "0.1.0"
__all__ = ["DeepLabError", "Segmenter", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import deeplabv1` (and the CRF on its own) stays light.
    if name == "Segmenter":
        from deeplabv1.predict.segmenter import Segmenter

        return Segmenter
    raise AttributeError(f"module 'deeplabv1' has no attribute {name!r}")
