"""Weight import: ImageNet VGG16 (torchvision or Caffe) and the authors' Caffe models.

- :mod:`deeplabv1.convert.torchvision_vgg`: pure ``state_dict -> state_dict`` functions
  (``torchvision_to_deeplab``, ``vgg16_from_torchvision``, ``deeplab_init_from_vgg16``).
- :mod:`deeplabv1.convert.caffe_proto`: the ``.caffemodel`` reader (``read_caffemodel``).
- :mod:`deeplabv1.convert.caffe`: Caffe layers -> our state dict (``caffe_to_deeplab``).

The command line is ``deeplabv1 convert`` (:mod:`deeplabv1.cli.convert`); see docs/convert.md.
"""
