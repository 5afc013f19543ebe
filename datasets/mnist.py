"""MNIST and Fashion-MNIST, centralized, from the original idx files.

Both datasets are published as four idx files (gzip-compressed):
``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``. A loader reads
each file as ``<name>.gz`` or, failing that, uncompressed ``<name>``, from
``data_dir`` when one is given, else from the download cache (subfolder
``mnist/`` or ``fashion_mnist/``: the two datasets use the same file names),
downloading the ``.gz`` files there when allowed (see
:mod:`fedjax_engine.datasets.download`).

The idx format (LeCun et al., http://yann.lecun.com/exdb/mnist/): a 4-byte
big-endian magic number ``0x00 0x00 <type> <ndim>`` (type ``0x08`` is
unsigned byte), then ``ndim`` big-endian uint32 dimensions, then the values
in C order. Every header is checked against the payload: a wrong magic
number, a payload shorter or longer than its dimensions, a bad gzip stream,
images and labels of different counts, or labels out of range raise a
``ValueError`` naming the file.

The loaders return the data centralized (:class:`Centralized`); the
partitioners of ``fedjax_engine.datasets.partition`` split it into clients.
``Centralized`` is defined here and shared with
:mod:`fedjax_engine.datasets.cifar`.

Example (tiny idx files written on the spot):

  >>> import gzip, os, struct, tempfile
  >>> import numpy as np
  >>> folder = tempfile.mkdtemp()
  >>> def write(name, magic, dims, values):
  ...   header = struct.pack('>I', magic) + struct.pack(f'>{len(dims)}I', *dims)
  ...   with gzip.open(os.path.join(folder, name + '.gz'), 'wb') as f:
  ...     _ = f.write(header + bytes(values))
  >>> for split, n in (('train', 2), ('t10k', 1)):
  ...   write(f'{split}-images-idx3-ubyte', 0x803, (n, 28, 28), [255] * 784 * n)
  ...   write(f'{split}-labels-idx1-ubyte', 0x801, (n,), [7] * n)
  >>> data = mnist(data_dir=folder)
  >>> data.train_x.shape, data.train_x.dtype, float(data.train_x.max())
  ((2, 28, 28), dtype('float32'), 1.0)
  >>> data.test_y.tolist(), data.num_classes
  ([7], 10)
"""

import gzip
import os
import struct
import zlib
from typing import NamedTuple

import numpy as np

from fedjax_engine.datasets import download as _download


class Centralized(NamedTuple):
  """A centralized (not yet partitioned) classification dataset.

  Attributes:
    train_x: float32 ``[N, ...]`` inputs in [0, 1].
    train_y: int32 ``[N]`` labels in ``[0, num_classes)``.
    test_x: float32 ``[M, ...]``.
    test_y: int32 ``[M]``.
    num_classes: the number of classes.
  """
  train_x: np.ndarray
  train_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray
  num_classes: int


NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)

_UBYTE = 0x08
_FILES = {
    'train_images': 'train-images-idx3-ubyte',
    'train_labels': 'train-labels-idx1-ubyte',
    'test_images': 't10k-images-idx3-ubyte',
    'test_labels': 't10k-labels-idx1-ubyte',
}

# MNIST: the mirror whose sha256 digests TensorFlow Datasets publishes
# (tensorflow/datasets, tensorflow_datasets/url_checksums/mnist.txt: URL, size
# in bytes, sha256). The same four .gz files are on
# https://ossci-datasets.s3.amazonaws.com/mnist/ (torchvision's mirror, which
# publishes md5 digests of the .gz files in torchvision/datasets/mnist.py).
MNIST_URL = 'https://storage.googleapis.com/cvdf-datasets/mnist/'
MNIST_SHA256 = {
    'train-images-idx3-ubyte.gz':
        '440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609',
    'train-labels-idx1-ubyte.gz':
        '3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c',
    't10k-images-idx3-ubyte.gz':
        '8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6',
    't10k-labels-idx1-ubyte.gz':
        'f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6',
}
# md5 of the *uncompressed* MNIST files, as widely published (they identify
# the content whatever the gzip compression); kept for reference and tests.
MNIST_RAW_MD5 = {
    'train-images-idx3-ubyte': '6bbc9ace898e44ae57da46a324031adb',
    'train-labels-idx1-ubyte': 'a25bea736e30d166cdddb491f175f624',
    't10k-images-idx3-ubyte': '2646ac647ad5339dbf082846283269ea',
    't10k-labels-idx1-ubyte': '27ae3e4e09519cfbb04c329615203637',
}

# Fashion-MNIST (Xiao et al. 2017, github.com/zalandoresearch/fashion-mnist):
# Zalando's own bucket (plain http: the S3 website endpoint has no https).
# sha256 as published by TensorFlow Datasets
# (tensorflow_datasets/url_checksums/fashion_mnist.txt).
FASHION_MNIST_URL = (
    'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/')
FASHION_MNIST_SHA256 = {
    'train-images-idx3-ubyte.gz':
        '3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84',
    'train-labels-idx1-ubyte.gz':
        'a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845',
    't10k-images-idx3-ubyte.gz':
        '346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073',
    't10k-labels-idx1-ubyte.gz':
        '67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5',
}


def mnist(*, data_dir: str | None = None, download: bool = True) -> Centralized:
  """MNIST: 60,000 train and 10,000 test digits, 28x28, 10 classes.

  Args:
    data_dir: a folder holding the four idx files (``.gz`` or uncompressed);
      when given, nothing is downloaded.
    download: allow downloading into the cache when the files are not there.

  Returns:
    :class:`Centralized` with x float32 ``[N, 28, 28]`` in [0, 1] (0 is the
    background) and y int32 ``[N]``.
  """
  return _load('mnist', MNIST_URL, MNIST_SHA256, data_dir, download)


def fashion_mnist(*, data_dir: str | None = None,
                  download: bool = True) -> Centralized:
  """Fashion-MNIST: 60,000 train and 10,000 test clothing images, 10 classes.

  Same format, shapes and arguments as :func:`mnist`.
  """
  return _load('fashion_mnist', FASHION_MNIST_URL, FASHION_MNIST_SHA256,
               data_dir, download)


def _load(subdir, url, sha256, data_dir, download):
  paths = {key: locate(name, subdir=subdir, url=url, sha256=sha256,
                       data_dir=data_dir, download=download)
           for key, name in _FILES.items()}
  splits = []
  for split in ('train', 'test'):
    x = read_idx(paths[f'{split}_images'], ndim=3)
    y = read_idx(paths[f'{split}_labels'], ndim=1)
    if x.shape[1:] != IMAGE_SHAPE:
      raise ValueError(f'{paths[f"{split}_images"]}: images are '
                       f'{x.shape[1:]}, expected {IMAGE_SHAPE}.')
    if len(x) != len(y):
      raise ValueError(
          f'{len(x)} images in {paths[f"{split}_images"]} but {len(y)} labels '
          f'in {paths[f"{split}_labels"]}.')
    if y.size and y.max() >= NUM_CLASSES:
      raise ValueError(f'{paths[f"{split}_labels"]}: label {int(y.max())} is '
                       f'outside [0, {NUM_CLASSES}).')
    splits += [to_unit_float(x), y.astype(np.int32)]
  return Centralized(*splits, num_classes=NUM_CLASSES)


def locate(name: str, *, subdir: str, url: str, sha256: dict,
           data_dir: str | None, download: bool) -> str:
  """The path of idx file ``name`` (``.gz`` preferred, else uncompressed).

  With ``data_dir`` only that folder is searched. Otherwise the cache folder
  ``<cache>/<subdir>/`` is searched and, failing that, ``<url><name>.gz`` is
  downloaded into it and checked against ``sha256[name + '.gz']``.
  """
  gz = name + '.gz'
  prefix = '' if data_dir is not None else subdir + '/'
  for candidate in (gz, name):
    try:
      return _download.resolve(prefix + candidate, url=None, sha256=None,
                               data_dir=data_dir, download=False)
    except FileNotFoundError:
      pass
  if data_dir is not None:
    raise FileNotFoundError(
        f'neither {gz} nor {name} is in data_dir {data_dir} (looked for '
        f'{os.path.join(data_dir, gz)} and {os.path.join(data_dir, name)}). '
        f'It is published at {url}{gz}.')
  return _download.resolve(prefix + gz, url=url + gz, sha256=sha256[gz],
                           download=download)


def read_idx(path: str, *, ndim: int | None = None) -> np.ndarray:
  """Reads an unsigned-byte idx file (``.gz`` or not) into a uint8 array.

  Raises:
    ValueError naming ``path`` when the file is not a well-formed idx file of
    unsigned bytes (with ``ndim`` dimensions, when given).
  """
  try:
    if path.endswith('.gz'):
      with gzip.open(path, 'rb') as f:
        raw = f.read()
    else:
      with open(path, 'rb') as f:
        raw = f.read()
  except (OSError, EOFError, zlib.error) as e:
    if isinstance(e, FileNotFoundError):
      raise
    raise ValueError(f'{path}: cannot read the gzip stream ({e}).') from e
  if len(raw) < 4:
    raise ValueError(f'{path}: {len(raw)} bytes, too short for an idx header.')
  zero, dtype, dims_count = raw[:2], raw[2], raw[3]
  magic = struct.unpack('>I', raw[:4])[0]
  if zero != b'\0\0' or dtype != _UBYTE or (
      ndim is not None and dims_count != ndim):
    expected = (f'0x{(_UBYTE << 8) | ndim:08x}' if ndim is not None else
                f'0x0000{_UBYTE:02x}NN')
    rank = '' if ndim is None else f' with {ndim} dimensions'
    raise ValueError(
        f'{path}: wrong magic number 0x{magic:08x}, expected {expected} (an '
        f'idx file of unsigned bytes{rank}).')
  header = 4 + 4 * dims_count
  if len(raw) < header:
    raise ValueError(f'{path}: truncated idx header ({len(raw)} bytes, '
                     f'{dims_count} dimensions need {header}).')
  dims = struct.unpack(f'>{dims_count}I', raw[4:header])
  expected = header + int(np.prod(dims, dtype=np.int64))
  if len(raw) != expected:
    kind = 'truncated' if len(raw) < expected else 'trailing data'
    raise ValueError(
        f'{path}: {kind}: dimensions {tuple(dims)} need {expected} bytes, the '
        f'file holds {len(raw)}.')
  return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def to_unit_float(pixels: np.ndarray) -> np.ndarray:
  """uint8 pixels -> float32 in [0, 1] (``p / 255``, correctly rounded)."""
  return np.divide(pixels, np.float32(255), dtype=np.float32)
