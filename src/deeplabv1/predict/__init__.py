"""Segmenting user images: ``Segmenter`` (Python API), image loading, the predict command, ONNX.

``deeplabv1.predict.segmenter``: ``Segmenter``, ``Prediction``; ``deeplabv1.predict.images``:
``load_image``, ``collect_inputs``; ``deeplabv1.predict.batch``: ``deeplabv1 predict``
(``PredictConfig``, ``run_predict``, alone or under torchrun) and ``deeplabv1.predict.pipeline``
its per-image stages; ``deeplabv1.predict.export``: ``export_onnx``, ``run_onnx``.
"""
