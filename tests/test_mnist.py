"""Tests for fedjax_engine.datasets.mnist: the idx reader and both loaders.

Small idx files in the real format are written into tmp_path; the real MNIST
files are read from ../shared/data/mnist when that folder exists.
"""

import importlib
import gzip
import hashlib
import os
import pathlib
import struct

import numpy as np
import pytest

from fedjax_engine.datasets import download
mnist_lib = importlib.import_module('fedjax_engine.datasets.mnist')

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / 'shared' / 'data' / 'mnist'

IMAGES_MAGIC = 0x00000803   # unsigned byte, 3 dimensions
LABELS_MAGIC = 0x00000801   # unsigned byte, 1 dimension


def idx_bytes(magic, dims, payload):
  return (struct.pack('>I', magic) + struct.pack(f'>{len(dims)}I', *dims) +
          bytes(payload))


def write(folder, name, data, gz=True):
  path = os.path.join(folder, name + ('.gz' if gz else ''))
  if gz:
    with gzip.open(path, 'wb') as f:
      f.write(data)
  else:
    with open(path, 'wb') as f:
      f.write(data)
  return path


def pattern(n, seed):
  """Image k, pixel (r, c) = (seed + 7k + 28r + c) mod 256."""
  k, r, c = np.meshgrid(np.arange(n), np.arange(28), np.arange(28),
                        indexing='ij')
  return ((seed + 7 * k + 28 * r + c) % 256).astype(np.uint8)


def write_dataset(folder, *, train_labels=(0, 9, 5), test_labels=(3, 7),
                  gz=True, seed=0):
  os.makedirs(folder, exist_ok=True)
  for split, labels in (('train', train_labels), ('t10k', test_labels)):
    n = len(labels)
    write(folder, f'{split}-images-idx3-ubyte',
          idx_bytes(IMAGES_MAGIC, (n, 28, 28), pattern(n, seed).tobytes()), gz)
    write(folder, f'{split}-labels-idx1-ubyte',
          idx_bytes(LABELS_MAGIC, (n,), labels), gz)
  return folder


def f32(numerator):
  return np.float32(numerator) / np.float32(255)


def test_reads_exact_values(tmp_path):
  data = mnist_lib.mnist(data_dir=write_dataset(str(tmp_path)))
  assert isinstance(data, mnist_lib.Centralized)
  assert data.num_classes == 10
  assert data.train_x.shape == (3, 28, 28) and data.test_x.shape == (2, 28, 28)
  assert data.train_x.dtype == np.float32 and data.train_y.dtype == np.int32
  assert data.train_y.tolist() == [0, 9, 5]
  assert data.test_y.tolist() == [3, 7]
  # Pixel (r, c) of image k is (7k + 28r + c) mod 256, divided by 255.
  assert data.train_x[0, 0, 0] == 0.0
  assert data.train_x[0, 0, 1] == f32(1)
  assert data.train_x[1, 1, 0] == f32(35)             # 7 + 28
  assert data.train_x[2, 27, 27] == f32(29)           # (14 + 783) % 256
  assert data.train_x[0, 9, 3] == f32(255)            # 252 + 3
  assert data.train_x[0, 9, 3] == 1.0
  assert data.train_x[0, 9, 4] == 0.0                 # 256 wraps to 0
  assert data.test_x[1, 0, 5] == f32(12)              # 7 + 5
  np.testing.assert_array_equal(data.train_x,
                                pattern(3, 0).astype(np.float32) / 255)


def test_fashion_mnist_reads_the_same_format(tmp_path):
  data = mnist_lib.fashion_mnist(
      data_dir=write_dataset(str(tmp_path), train_labels=(1, 2), seed=100))
  assert data.train_y.tolist() == [1, 2] and data.num_classes == 10
  assert data.train_x[0, 0, 0] == f32(100)


def test_uncompressed_files_and_gz_preference(tmp_path):
  folder = write_dataset(str(tmp_path), gz=False)
  assert mnist_lib.mnist(data_dir=folder).train_y.tolist() == [0, 9, 5]
  # A .gz beside the uncompressed file wins.
  write(folder, 'train-labels-idx1-ubyte',
        idx_bytes(LABELS_MAGIC, (3,), [4, 4, 4]))
  assert mnist_lib.mnist(data_dir=folder).train_y.tolist() == [4, 4, 4]


def test_read_idx_shapes_and_dtype(tmp_path):
  path = write(str(tmp_path), 'a', idx_bytes(0x00000802, (2, 3), range(6)))
  x = mnist_lib.read_idx(path)
  assert x.dtype == np.uint8 and x.tolist() == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize('magic', [0x00000801, 0x00000903, 0x01000803,
                                   0x12345678])
def test_wrong_magic_names_the_file(tmp_path, magic):
  folder = write_dataset(str(tmp_path))
  path = write(folder, 'train-images-idx3-ubyte',
               idx_bytes(magic, (3, 28, 28), bytes(3 * 784)))
  with pytest.raises(ValueError, match='wrong magic number') as e:
    mnist_lib.mnist(data_dir=folder)
  assert path in str(e.value)
  assert f'0x{magic:08x}' in str(e.value) and '0x00000803' in str(e.value)


def test_truncated_payload_names_the_file(tmp_path):
  folder = write_dataset(str(tmp_path))
  path = write(folder, 't10k-images-idx3-ubyte',
               idx_bytes(IMAGES_MAGIC, (2, 28, 28), bytes(2 * 784 - 1)))
  with pytest.raises(ValueError, match='truncated') as e:
    mnist_lib.mnist(data_dir=folder)
  assert path in str(e.value)
  assert '1583' in str(e.value) and '1584' in str(e.value)  # holds vs needs


def test_truncated_header_names_the_file(tmp_path):
  path = write(str(tmp_path), 'a', struct.pack('>I', IMAGES_MAGIC) + b'\0\0')
  with pytest.raises(ValueError, match='truncated idx header') as e:
    mnist_lib.read_idx(path, ndim=3)
  assert path in str(e.value)


def test_trailing_data_names_the_file(tmp_path):
  folder = write_dataset(str(tmp_path))
  path = write(folder, 'train-labels-idx1-ubyte',
               idx_bytes(LABELS_MAGIC, (3,), [0, 1, 2, 3]))
  with pytest.raises(ValueError, match='trailing data') as e:
    mnist_lib.mnist(data_dir=folder)
  assert path in str(e.value)


def test_truncated_gzip_stream_names_the_file(tmp_path):
  folder = write_dataset(str(tmp_path))
  path = os.path.join(folder, 'train-images-idx3-ubyte.gz')
  with open(path, 'rb') as f:
    blob = f.read()
  with open(path, 'wb') as f:
    f.write(blob[:len(blob) // 2])
  with pytest.raises(ValueError, match='gzip') as e:
    mnist_lib.mnist(data_dir=folder)
  assert path in str(e.value)


def test_not_gzip_at_all_names_the_file(tmp_path):
  folder = write_dataset(str(tmp_path))
  path = os.path.join(folder, 't10k-labels-idx1-ubyte.gz')
  with open(path, 'wb') as f:
    f.write(idx_bytes(LABELS_MAGIC, (2,), [3, 7]))   # raw bytes named .gz
  with pytest.raises(ValueError) as e:
    mnist_lib.mnist(data_dir=folder)
  assert path in str(e.value)


def test_count_mismatch_names_both_files(tmp_path):
  folder = write_dataset(str(tmp_path))
  labels = write(folder, 'train-labels-idx1-ubyte',
                 idx_bytes(LABELS_MAGIC, (2,), [0, 1]))
  with pytest.raises(ValueError, match='3 images') as e:
    mnist_lib.mnist(data_dir=folder)
  assert labels in str(e.value)
  assert os.path.join(folder, 'train-images-idx3-ubyte.gz') in str(e.value)


def test_wrong_image_size_names_the_file(tmp_path):
  folder = write_dataset(str(tmp_path))
  path = write(folder, 'train-images-idx3-ubyte',
               idx_bytes(IMAGES_MAGIC, (3, 27, 28), bytes(3 * 27 * 28)))
  with pytest.raises(ValueError, match=r'\(27, 28\)') as e:
    mnist_lib.mnist(data_dir=folder)
  assert path in str(e.value)


def test_label_out_of_range_names_the_file(tmp_path):
  folder = write_dataset(str(tmp_path), test_labels=(3, 10))
  with pytest.raises(ValueError, match='label 10') as e:
    mnist_lib.mnist(data_dir=folder)
  assert os.path.join(folder, 't10k-labels-idx1-ubyte.gz') in str(e.value)


def test_missing_file_in_data_dir(tmp_path):
  folder = write_dataset(str(tmp_path))
  os.remove(os.path.join(folder, 't10k-labels-idx1-ubyte.gz'))
  with pytest.raises(FileNotFoundError) as e:
    mnist_lib.mnist(data_dir=folder)
  message = str(e.value)
  assert os.path.join(folder, 't10k-labels-idx1-ubyte.gz') in message
  assert os.path.join(folder, 't10k-labels-idx1-ubyte') in message
  assert mnist_lib.MNIST_URL + 't10k-labels-idx1-ubyte.gz' in message


def test_cache_folders_are_per_dataset(tmp_path, monkeypatch):
  cache = tmp_path / 'cache'
  monkeypatch.setenv(download.CACHE_ENV, str(cache))
  write_dataset(str(cache / 'mnist'), train_labels=(1,))
  write_dataset(str(cache / 'fashion_mnist'), train_labels=(2,), gz=False)
  assert mnist_lib.mnist(download=False).train_y.tolist() == [1]
  assert mnist_lib.fashion_mnist(download=False).train_y.tolist() == [2]


def test_cache_miss_without_download(tmp_path, monkeypatch):
  monkeypatch.setenv(download.CACHE_ENV, str(tmp_path))
  with pytest.raises(FileNotFoundError) as e:
    mnist_lib.mnist(download=False)
  assert os.path.join(str(tmp_path), 'mnist',
                      'train-images-idx3-ubyte.gz') in str(e.value)






def test_downloads_into_the_cache_with_checksums(tmp_path, monkeypatch,
                                                 file_server):
  root, url = file_server
  write_dataset(str(root), train_labels=(6, 6))
  sums = {n: download.sha256_of(root / n) for n in os.listdir(root)}
  monkeypatch.setattr(mnist_lib, 'FASHION_MNIST_URL', url)
  monkeypatch.setattr(mnist_lib, 'FASHION_MNIST_SHA256', sums)
  cache = tmp_path / 'cache'
  monkeypatch.setenv(download.CACHE_ENV, str(cache))
  data = mnist_lib.fashion_mnist()
  assert data.train_y.tolist() == [6, 6]
  assert sorted(os.listdir(cache / 'fashion_mnist')) == sorted(sums)
  # A wrong pinned checksum is refused and leaves nothing in the cache.
  (cache / 'fashion_mnist' / 't10k-labels-idx1-ubyte.gz').unlink()
  monkeypatch.setitem(sums, 't10k-labels-idx1-ubyte.gz', '0' * 64)
  with pytest.raises(download.DownloadError, match='checksum mismatch'):
    mnist_lib.fashion_mnist()
  assert not (cache / 'fashion_mnist' / 't10k-labels-idx1-ubyte.gz').exists()


def test_pinned_checksums_are_well_formed():
  for table in (mnist_lib.MNIST_SHA256, mnist_lib.FASHION_MNIST_SHA256):
    assert sorted(table) == sorted(n + '.gz' for n in mnist_lib._FILES.values())
    assert all(len(v) == 64 and int(v, 16) >= 0 for v in table.values())


needs_shared_mnist = pytest.mark.skipif(
    not SHARED_MNIST.is_dir(),
    reason=f'real MNIST not available: {SHARED_MNIST} is absent')


@needs_shared_mnist
def test_shared_mnist_files_match_published_checksums():
  for name, md5 in mnist_lib.MNIST_RAW_MD5.items():
    with gzip.open(SHARED_MNIST / (name + '.gz'), 'rb') as f:
      assert hashlib.md5(f.read()).hexdigest() == md5, name
  # Three of the four .gz files are byte-identical to the published ones;
  # the local train-images .gz was recompressed (same content, see above).
  for name in ('train-labels-idx1-ubyte.gz', 't10k-images-idx3-ubyte.gz',
               't10k-labels-idx1-ubyte.gz'):
    assert download.sha256_of(SHARED_MNIST / name) == mnist_lib.MNIST_SHA256[name], name


@needs_shared_mnist
def test_real_mnist():
  data = mnist_lib.mnist(data_dir=str(SHARED_MNIST))
  assert data.train_x.shape == (60000, 28, 28)
  assert data.test_x.shape == (10000, 28, 28)
  assert data.train_y.shape == (60000,) and data.test_y.shape == (10000,)
  assert data.train_x.dtype == np.float32 and data.test_y.dtype == np.int32
  for x in (data.train_x, data.test_x):
    assert x.min() == 0.0 and x.max() == 1.0
  assert data.train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
  assert data.test_y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
  assert np.bincount(data.train_y).tolist() == [
      5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
  assert np.bincount(data.test_y).tolist() == [
      980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
  assert abs(float(data.train_x.mean()) - 0.1307) < 1e-4
