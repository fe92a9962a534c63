"""Datasets and the Caffe input pipeline: VOC 2012 / SBD layouts, your own images/ + masks/
folders, merging, download, synthesis.

Modules: ``palette`` (classes, colour map, label PNGs), ``caffe_input`` (BGR minus mean),
``transforms`` (TrainTransform, TestTransform), ``datasets`` (SegmentationDataset, open_dataset,
voc_dataset), ``voc`` / ``sbd`` (layouts, lists, .mat labels), ``folder`` (a plain images/ +
masks/ folder),
``layout`` (which layout a root has; one split's folders and ids), ``classes`` (class names and
colours: classes files, defaults), ``prepare`` (SegmentationClassAug, train_aug), ``download`` /
``archive`` (verified, resumable fetch and safe extraction), ``synth`` (synthetic data), ``check``
(dataset validation, mask sanity warnings). Import the submodules directly.
"""
