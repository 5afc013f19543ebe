"""Federated Stack Overflow: next-word prediction and tag prediction.

TensorFlow Federated's (TFF) Stack Overflow dataset: one client per user,
one example per sentence of a question or answer (342,477 train users with
135,818,730 sentences; 204,088 test users with 16,586,035). The published
h5 files (``stackoverflow_{train,held_out,test}.h5`` in
``stackoverflow.tar.bz2``) hold ``examples/<client_id>/`` with the string
datasets ``tokens`` (the sentence's words joined by ``' '``), ``title``,
``tags`` (joined by ``'|'``), ``type``, ``creation_date`` and ``score``.
Vocabularies: ``stackoverflow.word_count`` (lines ``word count``, most
frequent first) and ``stackoverflow.tag_count`` (a JSON object tag ->
count), each in its own ``.tar.bz2``.

Next-word prediction (:func:`stackoverflow_nwp`), ids as FedJAX's
``StackoverflowTokenizer`` gives them: ``PAD = 0``, ``BOS = 1``, ``EOS = 2``,
the ``vocab_size`` most frequent words ``3 .. vocab_size + 2``, and
``OOV = vocab_size + 3``: ``vocab_size + 4`` classes (10,004). A sentence's
words (split on single spaces) become ``[BOS] + words + [EOS]``, cut to
``sequence_length + 1`` tokens and padded with ``PAD``; ``x = t[:-1]``,
``y = t[1:]``. A sentence of ``sequence_length`` words or more thus has no
EOS, as in TFF's ``word_prediction_preprocessing``. (TFF numbers the same
tokens differently: pad 0, words 1.., oov, bos, eos last.)

Tag prediction (:func:`stackoverflow_tags`), as TFF's
``tag_prediction_preprocessing``: the words of ``tokens + ' ' + title``
(split on whitespace) as a bag of words normalized by the number of words,
out-of-vocabulary words included in that count and then dropped; the
``num_tags`` most frequent tags as a multi-hot target (a tag listed twice
counts 2, as TFF's sum of one-hots does).

Memory: the full data does not fit in memory in these dense layouts (next
word: 160 B a sentence, 22 GB for train; tags: 40 KB a sentence). Load a
subset with ``client_ids=`` or ``max_clients=``, and ``max_examples=`` per
client. Reading is lazy and two-pass: the vocabulary first, then the sizes
from the h5 shapes, then each client's strings straight into preallocated
arrays.

Example:

  >>> words = [b'the', b'code']
  >>> vocabulary_size(len(words)), oov_id(len(words))
  (6, 5)
"""

import itertools
import json
import os
from typing import Mapping, Sequence

import numpy as np

from fedjax_engine.data import FederatedData
from fedjax_engine.datasets import download as download_lib
from fedjax_engine.datasets import tff

PAD = 0
BOS = 1
EOS = 2
NUM_RESERVED = 3

# From tensorflow_federated/python/simulation/datasets/stackoverflow.py
# (the h5 release; later TFF versions publish stackoverflow.sqlite.lzma).
URL = 'https://storage.googleapis.com/tff-datasets-public/stackoverflow.tar.bz2'
SHA256 = '99eca2f8b8327a09e5fc123979df2d237acbc5e52322f6d86bf523ee47b961a2'
ARCHIVE = 'stackoverflow.tar.bz2'
CACHE_SUBDIR = 'stackoverflow'   # <cache>/stackoverflow/ holds all the files
FILES = ('stackoverflow_train.h5', 'stackoverflow_test.h5')
WORD_COUNT = 'stackoverflow.word_count'
WORD_COUNT_ARCHIVE = 'stackoverflow.word_count.tar.bz2'
WORD_COUNT_URL = ('https://storage.googleapis.com/tff-datasets-public/'
                  'stackoverflow.word_count.tar.bz2')
WORD_COUNT_SHA256 = (
    '1dc00256d6e527c54b9756d968118378ae14e6692c0b3b6cad470cdd3f0c519c')
TAG_COUNT = 'stackoverflow.tag_count'
TAG_COUNT_ARCHIVE = 'stackoverflow.tag_count.tar.bz2'
TAG_COUNT_URL = ('https://storage.googleapis.com/tff-datasets-public/'
                 'stackoverflow.tag_count.tar.bz2')
TAG_COUNT_SHA256 = (
    '6fe281cec490d9384a290d560072438e7e2b377bbb823876ce7bd6f82696772d')

_SEP = b'\x00'   # joins a client's strings; cannot occur in h5 fixed strings


def vocabulary_size(vocab_size: int) -> int:
  """Classes of next-word prediction: words + PAD, BOS, EOS, OOV."""
  return vocab_size + NUM_RESERVED + 1


def oov_id(vocab_size: int) -> int:
  return vocab_size + NUM_RESERVED


def _check_positive(name, value):
  if not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f'{name} must be a positive integer, got {value!r}.')


# ---------------------------------------------------------------------------
# Vocabularies.


def load_words(vocab_size: int = 10000, *, data_dir: str | None = None,
               download: bool = True) -> list[bytes]:
  """The ``vocab_size`` most frequent words (the first lines of the file)."""
  _check_positive('vocab_size', vocab_size)
  (path,) = download_lib.archive_files(
      [WORD_COUNT], archive=WORD_COUNT_ARCHIVE, url=WORD_COUNT_URL,
      sha256=WORD_COUNT_SHA256, cache_subdir=CACHE_SUBDIR, data_dir=data_dir,
      download=download)
  words = []
  with open(path, 'rb') as f:
    for number, line in enumerate(itertools.islice(f, vocab_size), 1):
      fields = line.split()
      if len(fields) != 2 or not fields[1].isdigit():
        raise ValueError(f'{path}, line {number}: expected "word count", got '
                         f'{line[:80]!r}.')
      words.append(fields[0])
  if len(words) < vocab_size:
    raise ValueError(f'{path} lists {len(words)} words, fewer than '
                     f'vocab_size={vocab_size}.')
  if len(set(words)) != len(words):
    raise ValueError(f'{path} lists a word twice in its first {vocab_size} '
                     'lines.')
  return words


def load_tags(num_tags: int = 500, *, data_dir: str | None = None,
              download: bool = True) -> list[bytes]:
  """The ``num_tags`` most frequent tags (ties keep the file's order)."""
  _check_positive('num_tags', num_tags)
  (path,) = download_lib.archive_files(
      [TAG_COUNT], archive=TAG_COUNT_ARCHIVE, url=TAG_COUNT_URL,
      sha256=TAG_COUNT_SHA256, cache_subdir=CACHE_SUBDIR, data_dir=data_dir,
      download=download)
  try:
    with open(path, 'rb') as f:
      counts = json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f'{path} is not a JSON object of tag counts: {e}') from e
  if not isinstance(counts, dict) or not all(
      isinstance(v, int) for v in counts.values()):
    raise ValueError(f'{path} must hold a JSON object mapping tags to '
                     'integer counts.')
  if len(counts) < num_tags:
    raise ValueError(f'{path} lists {len(counts)} tags, fewer than '
                     f'num_tags={num_tags}.')
  # As TFF's load_tag_counts: a stable sort by decreasing count.
  ranked = sorted(counts.items(), key=lambda item: item[1], reverse=True)
  return [tag.encode('utf-8') for tag, _ in ranked[:num_tags]]


def _table(words: Sequence[bytes]) -> dict:
  table = {w: NUM_RESERVED + i for i, w in enumerate(words)}
  table[_SEP] = -1
  return table


# ---------------------------------------------------------------------------
# Strings -> ids, one client at a time, no Python per word.


def _as_bytes(values: np.ndarray) -> list[bytes]:
  return [v.encode('utf-8') if isinstance(v, str) else v
          for v in values.tolist()]


def _split_ids(strings: Sequence[bytes], table: Mapping[bytes, int],
               oov: int, sep: bytes | None, path: str):
  """Ids of every piece of every string, and which string each belongs to.

  ``sep`` is the separator (None: runs of whitespace, as ``bytes.split()``).
  Returns ``ids [total]``, ``owner [total]`` and ``lengths [n]``.
  """
  n = len(strings)
  if n == 0:
    empty = np.zeros(0, np.int64)
    return empty, empty, empty
  glue = (b' ' if sep is None else sep) + _SEP + (b' ' if sep is None else sep)
  pieces = glue.join(strings).split(sep)
  ids = np.fromiter(map(table.get, pieces, itertools.repeat(oov)), np.int64,
                    count=len(pieces))
  cut = ids == -1
  if np.count_nonzero(cut) != n - 1:
    raise ValueError(f'{path}: a string holds a NUL byte; cannot tokenize.')
  owner = np.cumsum(cut)[~cut]
  ids = ids[~cut]
  return ids, owner, np.bincount(owner, minlength=n)


def _nwp_rows(sentences, table, oov, sequence_length, path):
  """``x``, ``y`` ``[n, sequence_length]`` for sentences of one client."""
  n, length = len(sentences), sequence_length
  ids, owner, counts = _split_ids(sentences, table, oov, b' ', path)
  position = np.arange(ids.size) - np.repeat(np.cumsum(counts) - counts,
                                             counts)
  keep = position < length
  stream = np.zeros((n, length + 1), np.int32)      # PAD
  stream[:, 0] = BOS
  stream[owner[keep], 1 + position[keep]] = ids[keep]
  short = np.flatnonzero(counts < length)
  stream[short, counts[short] + 1] = EOS
  return stream[:, :-1], stream[:, 1:]


def _bag_rows(x, y, tokens, titles, tags, word_table, tag_table, path):
  """Fills ``x`` (bag of words) and ``y`` (tag counts) for one client."""
  vocab, num_tags = x.shape[1], y.shape[1]
  texts = list(map(b' '.join, zip(tokens, titles)))
  ids, owner, counts = _split_ids(texts, word_table, vocab + NUM_RESERVED,
                                  None, path)
  keep = ids < vocab + NUM_RESERVED
  keys, hits = np.unique(owner[keep] * vocab + (ids[keep] - NUM_RESERVED),
                         return_counts=True)
  rows = keys // vocab
  x[rows, keys % vocab] = (hits.astype(np.float32) /
                           counts[rows].astype(np.float32))
  ids, owner, _ = _split_ids(tags, tag_table, num_tags + NUM_RESERVED, b'|',
                             path)
  keep = ids < num_tags + NUM_RESERVED
  keys, hits = np.unique(owner[keep] * num_tags + (ids[keep] - NUM_RESERVED),
                         return_counts=True)
  y[keys // num_tags, keys % num_tags] = hits


# ---------------------------------------------------------------------------
# Loading.


def _client_list(paths, client_ids, max_clients):
  known = tff.union_client_ids(paths)
  if client_ids is None:
    ids = known
  else:
    ids = [c.decode() if isinstance(c, bytes) else str(c) for c in client_ids]
    if len(set(ids)) != len(ids):
      raise ValueError('client_ids lists a client twice.')
    unknown = sorted(set(ids) - set(known))
    if unknown:
      raise ValueError(f'{len(unknown)} of client_ids are in neither '
                       f'{" nor ".join(paths)}: {unknown[:5]}.')
  return ids if max_clients is None else ids[:max_clients]


def _check_options(max_clients, max_examples):
  if max_clients is not None:
    _check_positive('max_clients', max_clients)
  if max_examples is not None:
    _check_positive('max_examples', max_examples)


def _sizes(examples, path, client_ids, features, max_examples):
  """Pass 1: each client's number of examples, from the h5 shapes."""
  counts = np.zeros(len(client_ids), np.int64)
  for k, cid in enumerate(client_ids):
    if cid not in examples:
      continue
    lengths = {f: len(tff.string_dataset(examples, cid, f, path))
               for f in features}
    if len(set(lengths.values())) != 1:
      raise ValueError(f'{path}: client {cid!r} has features of unequal '
                       f'lengths {lengths}.')
    counts[k] = min(lengths[features[0]], max_examples or np.inf)
  return counts


def _read(examples, cid, feature, path, count):
  return _as_bytes(tff.string_dataset(examples, cid, feature, path)[:count])


def _load_nwp_split(path, client_ids, table, oov, sequence_length,
                    max_examples):
  with tff.open_tff_h5(path) as examples:
    counts = _sizes(examples, path, client_ids, ['tokens'], max_examples)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    x = np.empty((offsets[-1], sequence_length), np.int32)
    y = np.empty((offsets[-1], sequence_length), np.int32)
    for k, cid in enumerate(client_ids):
      if counts[k]:
        lo, hi = offsets[k], offsets[k + 1]
        sentences = _read(examples, cid, 'tokens', path, counts[k])
        x[lo:hi], y[lo:hi] = _nwp_rows(sentences, table, oov,
                                       sequence_length, path)
  return FederatedData({'x': x, 'y': y}, offsets, np.asarray(client_ids))


def _load_tags_split(path, client_ids, word_table, tag_table, vocab_size,
                     num_tags, max_examples):
  with tff.open_tff_h5(path) as examples:
    counts = _sizes(examples, path, client_ids, ['tokens', 'title', 'tags'],
                    max_examples)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    x = np.zeros((offsets[-1], vocab_size), np.float32)   # pages on write
    y = np.zeros((offsets[-1], num_tags), np.float32)
    for k, cid in enumerate(client_ids):
      if counts[k]:
        lo, hi = offsets[k], offsets[k + 1]
        _bag_rows(x[lo:hi], y[lo:hi],
                  *(_read(examples, cid, f, path, counts[k])
                    for f in ('tokens', 'title', 'tags')),
                  word_table, tag_table, path)
  return FederatedData({'x': x, 'y': y}, offsets, np.asarray(client_ids))


def _data_files(data_dir, download):
  return download_lib.archive_files(
      FILES, archive=ARCHIVE, url=URL, sha256=SHA256,
      cache_subdir=CACHE_SUBDIR, data_dir=data_dir, download=download)


def stackoverflow_nwp(*, vocab_size: int = 10000, sequence_length: int = 20,
                      client_ids: Sequence[str] | None = None,
                      max_clients: int | None = None,
                      max_examples: int | None = None,
                      data_dir: str | None = None, download: bool = True):
  """Loads Stack Overflow as next-word prediction.

  Args:
    vocab_size: the most frequent words kept (10,000 as Reddi et al. 2021).
    sequence_length: tokens per example (20, TFF's default).
    client_ids: load only these clients, in this order (None: all, sorted);
      an id in neither split is an error.
    max_clients: keep only the first ``max_clients`` of them.
    max_examples: keep at most this many of each client's first sentences
      (TFF's ``max_elements``); None: all.
    data_dir: a folder holding ``stackoverflow_train.h5``,
      ``stackoverflow_test.h5`` and ``stackoverflow.word_count`` (or their
      archives); None: the cache.
    download: allow downloading the archives into the cache.

  Returns:
    ``(train, test)`` FederatedData, same clients in the same order (a client
    missing from a split has no examples there), features ``x``, ``y`` int32
    ``[n, sequence_length]`` with ids in ``[0, vocabulary_size(vocab_size))``;
    ``y == PAD`` marks padding.

  Example:

    >>> import os, tempfile, h5py
    >>> folder = tempfile.mkdtemp()
    >>> with open(os.path.join(folder, WORD_COUNT), 'w') as f:
    ...   _ = f.write('the 9\\ncode 5\\n')
    >>> for split in ('train', 'test'):
    ...   with h5py.File(os.path.join(folder, f'stackoverflow_{split}.h5'),
    ...                  'w') as f:
    ...     f['examples/u1/tokens'] = [b'the code runs']
    >>> train, test = stackoverflow_nwp(vocab_size=2, sequence_length=4,
    ...                                 data_dir=folder)
    >>> train.features['x'].tolist(), train.features['y'].tolist()
    ([[1, 3, 4, 5]], [[3, 4, 5, 2]])

  Reference: TFF ``baselines/stackoverflow/word_prediction_preprocessing.py``;
  FedJAX ``fedjax.datasets.stackoverflow.StackoverflowTokenizer``.
  """
  _check_positive('vocab_size', vocab_size)
  _check_positive('sequence_length', sequence_length)
  _check_options(max_clients, max_examples)
  words = load_words(vocab_size, data_dir=data_dir, download=download)
  paths = _data_files(data_dir, download)
  ids = _client_list(paths, client_ids, max_clients)
  table = _table(words)
  return tuple(_load_nwp_split(p, ids, table, oov_id(vocab_size),
                               int(sequence_length), max_examples)
               for p in paths)


def stackoverflow_tags(*, vocab_size: int = 10000, num_tags: int = 500,
                       client_ids: Sequence[str] | None = None,
                       max_clients: int | None = None,
                       max_examples: int | None = None,
                       data_dir: str | None = None, download: bool = True):
  """Loads Stack Overflow as tag prediction (multi-label).

  Args:
    vocab_size: words of the bag of words (10,000, TFF's default).
    num_tags: tags predicted (500, TFF's default).
    client_ids, max_clients, max_examples, data_dir, download: as in
      :func:`stackoverflow_nwp`; the vocabularies ``stackoverflow.word_count``
      and ``stackoverflow.tag_count`` are needed too.

  Returns:
    ``(train, test)`` FederatedData with features ``x`` float32
    ``[n, vocab_size]`` (word counts / number of words; all 0 for a sentence
    without words, where TFF's mean would be NaN) and ``y`` float32
    ``[n, num_tags]`` (tag counts, normally 0 or 1). 4 * (vocab_size +
    num_tags) bytes an example: 42 KB with the defaults.

  Example:

    >>> import json, os, tempfile, h5py
    >>> folder = tempfile.mkdtemp()
    >>> with open(os.path.join(folder, WORD_COUNT), 'w') as f:
    ...   _ = f.write('the 9\\ncode 5\\n')
    >>> with open(os.path.join(folder, TAG_COUNT), 'w') as f:
    ...   json.dump({'java': 3, 'c': 7}, f)
    >>> for split in ('train', 'test'):
    ...   with h5py.File(os.path.join(folder, f'stackoverflow_{split}.h5'),
    ...                  'w') as f:
    ...     f['examples/u1/tokens'] = [b'the code']
    ...     f['examples/u1/title'] = [b'the bug']
    ...     f['examples/u1/tags'] = [b'java|go']
    >>> train, _ = stackoverflow_tags(vocab_size=2, num_tags=2,
    ...                               data_dir=folder)
    >>> train.features['x'].tolist(), train.features['y'].tolist()
    ([[0.5, 0.25]], [[0.0, 1.0]])

  Reference: TFF ``baselines/stackoverflow/tag_prediction_preprocessing.py``
  and ``tag_prediction_tasks.py``.
  """
  _check_positive('vocab_size', vocab_size)
  _check_positive('num_tags', num_tags)
  _check_options(max_clients, max_examples)
  words = load_words(vocab_size, data_dir=data_dir, download=download)
  tags = load_tags(num_tags, data_dir=data_dir, download=download)
  paths = _data_files(data_dir, download)
  ids = _client_list(paths, client_ids, max_clients)
  return tuple(_load_tags_split(p, ids, _table(words), _table(tags),
                                int(vocab_size), int(num_tags), max_examples)
               for p in paths)


def stackoverflow_client_ids(*, data_dir: str | None = None,
                             download: bool = True) -> list[str]:
  """The sorted union of the train and test client ids (TFF's order).

  Reads only the files' indexes, so a subset can be chosen before loading.
  """
  return tff.union_client_ids(_data_files(data_dir, download))
