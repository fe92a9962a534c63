"""Datasets and the Caffe input pipeline: VOC 2012 / SBD layouts, merging, download, synthesis.

Modules: ``palette`` (classes, colour map, label PNGs), ``caffe_input`` (BGR minus mean),
``transforms`` (TrainTransform, TestTransform), ``datasets`` (SegmentationDataset, voc_dataset),
``voc`` / ``sbd`` (layouts, lists, .mat labels), ``prepare`` (SegmentationClassAug, train_aug),
``download`` / ``archive`` (verified, resumable fetch and safe extraction), ``synth`` (synthetic
VOC-layout data), ``check`` (dataset validation). Import the submodules directly.
"""
