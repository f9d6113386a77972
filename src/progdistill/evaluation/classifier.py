"""A small Fashion-MNIST classifier whose penultimate layer is the feature space of our offline FID-style metric.

Inception weights cannot be downloaded here, so the project trains this network itself
(`scripts/train_fashion_classifier.py`) and ships its weights as package data next to this module.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch
from torch import Tensor, nn

from .frechet import gaussian_stats

WEIGHTS_NAME = "fashion_mnist_classifier.safetensors"
FEATURE_DIM = 256
NUM_CLASSES = 10


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FashionClassifier(nn.Module):
    """CNN for [B, 1, 28, 28] images in [-1, 1]: conv 32 -> pool -> conv 64 -> pool -> conv 128 -> avg-pool 3x3
    -> linear 256 (+ReLU; the feature layer) -> dropout -> linear 10. Convs are 3x3 + BatchNorm + ReLU; pooling
    early keeps CPU training to minutes, the 3x3 average pool keeps the weights file about 1.6 MB."""

    def __init__(self, dropout: float = 0.3):
        super().__init__()
        self.body = nn.Sequential(
            _conv(1, 32),
            nn.MaxPool2d(2),  # 14x14
            _conv(32, 64),
            nn.MaxPool2d(2),  # 7x7
            _conv(64, 128),
            nn.AdaptiveAvgPool2d(3),  # 3x3, keeps the linear layer (and the weights file) small
            nn.Flatten(),
            nn.Linear(128 * 9, FEATURE_DIM),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations [B, 256] (after the ReLU of the 256-wide linear layer)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"expected [B, 1, 28, 28] images, got {tuple(x.shape)}")
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits [B, 10]."""
        return self.head(self.dropout(self.features(x)))


def weights_resource():
    """The shipped weights file as an importlib.resources Traversable."""
    return resources.files("progdistill.evaluation").joinpath("weights", WEIGHTS_NAME)


def load_classifier(device: str | torch.device = "cpu") -> FashionClassifier:
    """The shipped FashionClassifier (safetensors), in eval mode with requires_grad False, on `device`."""
    from safetensors.torch import load

    res = weights_resource()
    if not res.is_file():
        raise FileNotFoundError(
            f"classifier weights not found at {res}; create them with `python scripts/train_fashion_classifier.py` "
            "(and make sure the package data src/progdistill/evaluation/weights/*.safetensors is installed)"
        )
    state = load(res.read_bytes())
    model = FashionClassifier()
    model.load_state_dict(state)
    model.to(device).eval()
    model.requires_grad_(False)
    return model


def _check_images(images: Tensor) -> None:
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 28, 28):
        raise ValueError(f"expected [N, 1, 28, 28] images, got {tuple(images.shape)}")


@torch.no_grad()
def _in_batches(fn, images: Tensor, classifier: FashionClassifier, batch_size: int) -> Tensor:
    """fn(batch on the classifier's device and dtype) for every batch of `images`, in eval mode, concatenated on the
    CPU (the classifier's mode is restored)."""
    was_training = classifier.training
    classifier.eval()
    try:
        param = next(classifier.parameters())
        return torch.cat([fn(images[i : i + batch_size].to(param.device, param.dtype)).cpu()
                          for i in range(0, images.shape[0], batch_size)])
    finally:
        classifier.train(was_training)


def feature_stats(images: Tensor, classifier: FashionClassifier, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(mean [256], covariance [256, 256]) in float64 of classifier features of [N, 1, 28, 28] images in [-1, 1]."""
    _check_images(images)
    return gaussian_stats(_in_batches(lambda x: classifier.features(x).double(), images, classifier, batch_size))


def predict_classes(images: Tensor, classifier: FashionClassifier, batch_size: int = 1000) -> Tensor:
    """The classifier's class (argmax of the logits) for each of [N, 1, 28, 28] images in [-1, 1]."""
    _check_images(images)
    return _in_batches(lambda x: classifier(x).argmax(1), images, classifier, batch_size)


def class_accuracy(images: Tensor, labels: Tensor, classifier: FashionClassifier) -> float:
    """Share of `images` the classifier assigns to the class they were sampled for (`labels`): what guidance
    buys a class-conditional model."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    return float((predict_classes(images, classifier) == labels.cpu()).double().mean())
