"""A drop-in for the pydensecrf package: the same modules (``densecrf``, ``utils``, ``eigen``),
names, arguments and results, on this project's CPU engine (numpy + numba, no torch).

    import deeplabv1.crf.pydensecrf.densecrf as dcrf    # instead of: import pydensecrf.densecrf
    from deeplabv1.crf.utils import unary_from_softmax   # deeplabv1.crf.<module> works as well

``checks`` holds the input checks and the label-compatibility classes.
"""
