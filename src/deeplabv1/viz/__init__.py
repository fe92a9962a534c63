"""Figures and plots: overlays, the paper-style panel strip, trimap / IoU / training curves.

``deeplabv1.viz.figures``: ``overlay``, ``side_by_side``. ``deeplabv1.viz.plots``:
``plot_trimap``, ``plot_class_iou``, ``plot_training_log``, ``plot_receptive_field``.
matplotlib is imported only when a plot is drawn (the Agg canvas: no display needed).
"""
