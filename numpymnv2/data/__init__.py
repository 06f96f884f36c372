"""Data: readers for image classification sets, batch transforms and a reproducible loader.

    from numpymnv2.data import load_dataset, DataLoader, default_transform
    train = load_dataset("digits", split="train")            # built in, offline: 1,497 8x8 images
    loader = DataLoader(train, batch_size=64, transform=default_transform(train, resolution=32), seed=0)
    for x, y in loader.epoch(0): ...                          # x float32 (64, 32, 32, 3), y int64 (64,)

Every reader returns a :class:`Dataset` (uint8 NHWC images, int64 labels, class names, name). Nothing here
touches the network except :func:`download`, which is only called explicitly.
"""
from numpymnv2.data.cifar import load_cifar10, read_cifar_batch
from numpymnv2.data.dataset import Dataset, default_data_dir, load_dataset
from numpymnv2.data.digits import load_digits
from numpymnv2.data.fetch import download, fetch_file
from numpymnv2.data.folder import load_image_folder
from numpymnv2.data.images import open_image, read_image
from numpymnv2.data.loader import DataLoader
from numpymnv2.data.mnist import load_fashion_mnist, load_mnist, read_idx
from numpymnv2.data import transforms
from numpymnv2.data.transforms import (Compose, GrayToRGB, Normalize, RandomCrop, RandomHorizontalFlip, Resize,
                                       ToFloat, bilinear_resize, channel_stats, default_transform)

__all__ = ["Dataset", "load_dataset", "default_data_dir", "load_digits", "load_mnist", "load_fashion_mnist",
           "load_cifar10", "load_image_folder", "open_image", "read_image", "read_idx", "read_cifar_batch", "download", "fetch_file",
           "DataLoader", "transforms", "Compose", "ToFloat", "Resize", "GrayToRGB", "Normalize", "RandomCrop",
           "RandomHorizontalFlip", "bilinear_resize", "channel_stats", "default_transform"]
