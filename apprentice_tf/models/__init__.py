"""Functional Keras builders for the teacher and student networks of Mishra & Marr, "Apprentice:
Using Knowledge Distillation Techniques To Improve Low-Precision Network Accuracy" (ICLR 2018).

* :mod:`~apprentice_tf.models.resnet`: CIFAR ResNet-20/32/44/56/110 and ImageNet
  ResNet-18/34/50/101/152 (He et al., CVPR 2016).
* :mod:`~apprentice_tf.models.mobilenet`: MobileNet v1 (Howard et al., 2017) with per-stage
  width/depth/block-type knobs for hardware-aware student selection.
* :mod:`~apprentice_tf.models.densenet`: CIFAR DenseNet-BC (Huang et al., CVPR 2017).
* :mod:`~apprentice_tf.models.layers`: the blocks they share (conv, BN, ReLU, logits head).
* :mod:`~apprentice_tf.models.families`: student families by name, ``build(family, **kw)``.

Every model starts with a Conv2D, ends with a Dense layer that returns logits (no softmax), and
comes from the one Keras of :mod:`apprentice_tf.compat`.
"""

from apprentice_tf.models import densenet, families, layers, mobilenet, resnet
from apprentice_tf.models.densenet import densenet_bc
from apprentice_tf.models.mobilenet import mobilenet_v1
from apprentice_tf.models.resnet import (
    cifar_resnet,
    imagenet_resnet,
    resnet18,
    resnet20,
    resnet32,
    resnet34,
    resnet44,
    resnet50,
    resnet56,
    resnet101,
    resnet110,
    resnet152,
)

__all__ = [
    "densenet",
    "families",
    "layers",
    "mobilenet",
    "resnet",
    "cifar_resnet",
    "imagenet_resnet",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "mobilenet_v1",
    "densenet_bc",
]
