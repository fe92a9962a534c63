"""Segmenting user images: ``Segmenter`` (Python API), image loading, ONNX export.

``deeplabv1.predict.segmenter``: ``Segmenter``, ``Prediction``; ``deeplabv1.predict.images``:
``load_image``, ``collect_inputs``; ``deeplabv1.predict.export``: ``export_onnx``, ``run_onnx``.
"""
