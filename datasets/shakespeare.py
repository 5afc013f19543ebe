"""Federated Shakespeare: next-character prediction, 715 speaking roles.

The dataset of TensorFlow Federated (TFF), built from LEAF's Shakespeare
(Caldas et al., "LEAF: A Benchmark for Federated Settings", 2018): one client
per role (play + character), 16,068 train / 2,356 test snippets, every role
in both splits. The published files are ``shakespeare_train.h5`` and
``shakespeare_test.h5`` (layout ``examples/<client_id>/snippets``, byte
strings), shipped in ``shakespeare.tar.bz2``.

Vocabulary: the 86 characters of TFF's text-generation tutorial, with the ids
FedJAX gives them (``fedjax/datasets/shakespeare.py``): ``PAD = 0``,
``BOS = 1``, ``EOS = 2``, ``VOCAB[i]`` -> ``3 + i``, and every other
character -> ``OOV = 89``; ``vocab_size = 90``. (TFF's baseline uses the
same characters but other ids: pad 0, characters 1-86, oov 87, bos 88,
eos 89.)

Sequences, as TFF's ``char_prediction_preprocessing`` builds them: each
snippet becomes ``[BOS] + chars + [EOS]``, is cut into chunks of
``sequence_length + 1`` tokens, the last chunk padded with ``PAD``; a chunk
gives ``x = chunk[:-1]``, ``y = chunk[1:]``. An example is one chunk.
``packing='client'`` instead joins a client's token streams and shifts by one
as FedJAX's ``preprocess_client`` does (no transition lost at chunk ends).
Targets equal to ``PAD`` are padding: models mask ``y == PAD`` out of the
loss and accuracy.

Files are found or fetched with
:func:`fedjax_engine.datasets.download.archive_files` (cache folder
``<cache>/shakespeare/``) and read with :mod:`fedjax_engine.datasets.tff`.

Example:

  >>> encode('To be').tolist()
  [14, 26, 16, 44, 67]
  >>> encode(['ab', 'c~']).tolist()   # '~' is not in the vocabulary
  [[66, 44], [23, 89]]
  >>> PAD, BOS, EOS, OOV, vocab_size
  (0, 1, 2, 89, 90)
"""

from typing import Sequence

import numpy as np

from fedjax_engine.data import FederatedData
from fedjax_engine.datasets import download as download_lib
from fedjax_engine.datasets import tff

# TFF tutorial "Federated Learning for Text Generation" character list, also
# CHAR_VOCAB in tensorflow_federated/python/simulation/baselines/shakespeare/
# char_prediction_preprocessing.py and the table in fedjax's shakespeare.py.
VOCAB: tuple[str, ...] = tuple(
    'dhlptx@DHLPTX $(,048cgkoswCGKOSW[_#\'/37;?bfjnrvzBFJNRVZ"&*.26:\n'
    'aeimquyAEIMQUY]!%)-159\r')
PAD = 0
BOS = 1
EOS = 2
NUM_RESERVED = 3                 # PAD, BOS, EOS come before the characters
OOV = NUM_RESERVED + len(VOCAB)  # 89
vocab_size = OOV + 1             # 90: the number of classes of the task
VOCAB_SIZE = vocab_size

# byte -> id; bytes outside VOCAB (and all non-ASCII) -> OOV.
TABLE = np.full(256, OOV, np.int32)
TABLE[np.frombuffer(''.join(VOCAB).encode('ascii'), np.uint8)] = np.arange(
    NUM_RESERVED, OOV, dtype=np.int32)
TABLE.setflags(write=False)

SPLITS = ('train', 'test')
FILES = ('shakespeare_train.h5', 'shakespeare_test.h5')
ARCHIVE = 'shakespeare.tar.bz2'
# From tensorflow_federated/python/simulation/datasets/shakespeare.py
# (tf.keras.utils.get_file(..., file_hash=..., hash_algorithm='sha256')).
URL = 'https://storage.googleapis.com/tff-datasets-public/shakespeare.tar.bz2'
SHA256 = '0285be9906cb5f268092eee4edeeacfc2af4574f2941f7cc2f08a321d7f5c707'
FEATURE = 'snippets'
PACKINGS = ('snippet', 'client')


# ---------------------------------------------------------------------------
# Characters -> ids.


def _codes(values) -> tuple[np.ndarray, np.ndarray]:
  """Character codes ``[n, width]`` (uint8 or uint32) and lengths ``[n]``."""
  arr = values if isinstance(values, np.ndarray) else np.asarray(values)
  arr = arr.reshape(-1)
  if arr.size == 0:
    return np.zeros((0, 0), np.uint8), np.zeros(0, np.int64)
  if arr.dtype.kind == 'O':
    items = arr.tolist()
    if all(isinstance(v, bytes) for v in items):
      arr = np.asarray(items, dtype=bytes)
    elif all(isinstance(v, str) for v in items):
      arr = np.asarray(items, dtype=str)
    else:
      raise TypeError('encode takes str or bytes values, got '
                      f'{sorted({type(v).__name__ for v in items})}.')
  if arr.dtype.kind not in 'SU':
    raise TypeError(f'encode takes strings or bytes, got dtype {arr.dtype}.')
  code = np.uint8 if arr.dtype.kind == 'S' else np.dtype('=u4')
  width = arr.dtype.itemsize // np.dtype(code).itemsize
  if width == 0:
    return np.zeros((arr.size, 0), code), np.zeros(arr.size, np.int64)
  codes = np.ascontiguousarray(arr).view(code).reshape(arr.size, width)
  # Fixed-width numpy strings end at their first trailing NUL.
  lengths = np.char.str_len(arr).astype(np.int64)
  return codes, lengths


def _lookup(codes: np.ndarray) -> np.ndarray:
  if codes.dtype == np.uint8:
    return TABLE[codes]
  return np.where(codes < 256, TABLE[np.minimum(codes, 255)], OOV)


def encode(strings) -> np.ndarray:
  """Character ids (int32) of a string, or of a batch of strings.

  Args:
    strings: one ``str``/``bytes`` -> ids ``[len]``; a sequence or array of
      them -> ids ``[n, longest]``, shorter strings padded with ``PAD``.
      Characters outside :data:`VOCAB` (any non-ASCII one too) -> ``OOV``;
      a ``str`` maps one id per character, ``bytes`` one per byte.
  """
  if isinstance(strings, bytes):
    return TABLE[np.frombuffer(strings, np.uint8)]
  if isinstance(strings, str):
    points = np.frombuffer(strings.encode('utf-32-le', 'surrogatepass'), '<u4')
    return _lookup(points).astype(np.int32)
  codes, lengths = _codes(strings)
  ids = _lookup(codes).astype(np.int32)
  ids[np.arange(codes.shape[1]) >= lengths[:, None]] = PAD
  return ids


def _flat_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """All characters back to back ``[total]`` and lengths ``[n]``."""
  if values.dtype.kind == 'O':   # variable-length strings: bytes objects
    items = [v.encode('utf-8') if isinstance(v, str) else v
             for v in values.tolist()]
    lengths = np.fromiter(map(len, items), np.int64, count=len(items))
    return np.frombuffer(b''.join(items), np.uint8), lengths
  codes, lengths = _codes(values)
  return codes[np.arange(codes.shape[1]) < lengths[:, None]], lengths


def _num_sequences(lengths: np.ndarray, sequence_length: int,
                   packing: str) -> int:
  if lengths.size == 0:
    return 0
  if packing == 'snippet':
    return int(np.sum((lengths + 2 + sequence_length) // (sequence_length + 1)))
  joined = int(np.sum(lengths + 2))
  return -(-(joined - 1) // sequence_length)


def _sequences(chars: np.ndarray, lengths: np.ndarray, sequence_length: int,
               packing: str) -> tuple[np.ndarray, np.ndarray]:
  """One client's ``x``, ``y`` ``[m, sequence_length]`` from its snippets."""
  span = lengths + 2                                   # BOS + chars + EOS
  if packing == 'snippet':                             # pad each to chunks
    span = (span + sequence_length) // (sequence_length + 1) * (
        sequence_length + 1)
  starts = np.concatenate([[0], np.cumsum(span)[:-1]])
  stream = np.zeros(int(span.sum()) + 1, np.int32)     # PAD everywhere
  stream[starts] = BOS
  stream[starts + lengths + 1] = EOS
  char_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
  where = np.repeat(starts + 1 - char_starts, lengths) + np.arange(chars.size)
  stream[where] = _lookup(chars)
  if packing == 'snippet':
    chunks = stream[:-1].reshape(-1, sequence_length + 1)
    return (np.ascontiguousarray(chunks[:, :-1]),
            np.ascontiguousarray(chunks[:, 1:]))
  joined = int(span.sum())
  m = -(-(joined - 1) // sequence_length)
  x = np.zeros(m * sequence_length, np.int32)
  y = np.zeros(m * sequence_length, np.int32)
  x[:joined - 1] = stream[:joined - 1]
  y[:joined - 1] = stream[1:joined]
  return x.reshape(m, sequence_length), y.reshape(m, sequence_length)


def _load_split(path: str, client_ids: Sequence[str], sequence_length: int,
                packing: str) -> FederatedData:
  with tff.open_tff_h5(path) as examples:
    present = [cid in examples for cid in client_ids]
    counts = np.zeros(len(client_ids), np.int64)
    for k, cid in enumerate(client_ids):       # pass 1: sizes only
      if present[k]:
        values = tff.string_dataset(examples, cid, FEATURE, path)[()]
        _, lengths = (_flat_codes(values) if values.dtype.kind == 'O'
                      else (None, np.char.str_len(values)))
        counts[k] = _num_sequences(np.asarray(lengths, np.int64),
                                   sequence_length, packing)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    x = np.empty((offsets[-1], sequence_length), np.int32)
    y = np.empty((offsets[-1], sequence_length), np.int32)
    for k, cid in enumerate(client_ids):       # pass 2: fill in place
      if counts[k]:
        values = tff.string_dataset(examples, cid, FEATURE, path)[()]
        cx, cy = _sequences(*_flat_codes(values), sequence_length, packing)
        if len(cx) != counts[k]:
          raise ValueError(f'{path} changed while it was read (client '
                           f'{cid!r}: {len(cx)} sequences, then {counts[k]}).')
        x[offsets[k]:offsets[k + 1]] = cx
        y[offsets[k]:offsets[k + 1]] = cy
  return FederatedData({'x': x, 'y': y}, offsets, np.asarray(client_ids))


def shakespeare(*, sequence_length: int = 80, packing: str = 'snippet',
                data_dir: str | None = None, download: bool = True):
  """Loads federated Shakespeare as next-character prediction.

  Args:
    sequence_length: characters per example (80, as McMahan et al. 2017).
    packing: ``'snippet'`` (TFF): each snippet ``[BOS] + chars + [EOS]`` is
      cut into chunks of ``sequence_length + 1`` tokens, the last padded;
      ``x = chunk[:-1]``, ``y = chunk[1:]``. ``'client'`` (FedJAX): a
      client's streams are joined and ``x``, ``y`` are the stream and the
      stream shifted by one, cut into rows of ``sequence_length``.
    data_dir: a folder holding ``shakespeare_train.h5`` and
      ``shakespeare_test.h5``, or ``shakespeare.tar.bz2`` (checked and
      extracted beside itself); None: the cache.
    download: allow downloading ``shakespeare.tar.bz2`` into the cache.

  Returns:
    ``(train, test)`` FederatedData with the same 715 clients in the same
    (sorted) order, features ``x`` and ``y`` int32 ``[n, sequence_length]``
    with ids in ``[0, vocab_size)``; ``y == PAD`` marks padding. The
    published data (2.36 million train and 0.34 million test characters)
    gives 37,784 train and 5,490 test sequences of 80 (30,249 and 4,657 with
    ``packing='client'``), 640 bytes each.

  Example:

    >>> import os, tempfile, h5py
    >>> folder = tempfile.mkdtemp()
    >>> for split, text in (('train', b'Hi.'), ('test', b'Yo')):
    ...   with h5py.File(os.path.join(folder, f'shakespeare_{split}.h5'),
    ...                  'w') as f:
    ...     f['examples/ROMEO/snippets'] = [text]
    >>> train, test = shakespeare(sequence_length=4, data_dir=folder)
    >>> train.client_ids.tolist(), train.features['x'].tolist()
    (['ROMEO'], [[1, 11, 68, 61]])
    >>> train.features['y'].tolist(), test.features['y'].tolist()
    ([[11, 68, 61, 2]], [[79, 26, 2, 0]])

  Reference: TFF ``tff.simulation.datasets.shakespeare.load_data`` and
  ``baselines/shakespeare/char_prediction_preprocessing.py``; FedJAX
  ``fedjax.datasets.shakespeare``.
  """
  if not isinstance(sequence_length, (int, np.integer)) or sequence_length < 1:
    raise ValueError(f'sequence_length must be a positive integer, got '
                     f'{sequence_length!r}.')
  if packing not in PACKINGS:
    raise ValueError(f'packing must be one of {PACKINGS}, got {packing!r}.')
  paths = download_lib.archive_files(
      FILES, archive=ARCHIVE, url=URL, sha256=SHA256,
      cache_subdir='shakespeare', data_dir=data_dir, download=download)
  client_ids = tff.union_client_ids(paths)
  return tuple(_load_split(p, client_ids, int(sequence_length), packing)
               for p in paths)
