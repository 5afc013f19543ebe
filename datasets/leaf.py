"""LEAF's JSON datasets: FEMNIST, Shakespeare and Sent140.

LEAF (Caldas et al., "LEAF: A Benchmark for Federated Settings",
arXiv:1812.01097, github.com/TalwalkarLab/leaf) publishes no preprocessed
files: its ``preprocess.sh`` writes ``data/train/*.json`` and
``data/test/*.json``. Every file holds ``users`` (names), ``num_samples``
(one count per user) and ``user_data/<user>/{x, y}`` (lists of equal length);
an optional ``hierarchies`` entry is ignored. When LEAF splits each user's
samples 90/10 (``--by_sample``), both files list the same users, each with at
least one sample; its ``user_data`` also keeps an empty entry for every user
it dropped (fewer than 2 samples) without listing it (``data/utils/
split_data.py``), so empty unlisted entries are ignored here. When LEAF
splits by user (``--by_user``), train and test users are disjoint.

Every loader reads the folder ``data_dir`` holding ``train/`` and ``test/``
(LEAF's ``data/<dataset>/data``; default ``<cache>/leaf/<dataset>``, see
:func:`fedjax_engine.datasets.download.cache_dir`) and returns ``(train,
test)`` FederatedData over the union of both splits' users, sorted as
strings, in the same order in both; a user absent from a split has 0
examples there. Each split is read in two passes: the first takes ``users``
and ``num_samples`` from the head of every file (no sample is parsed), the
second parses one file at a time and writes each user's samples straight
into one preallocated array per feature. Errors name the file and the user:
invalid JSON, ``num_samples`` that disagree with ``user_data``, a listed user
with no samples, a user listed twice, a wrong pixel count or sequence length,
labels out of range, a missing ``train/`` or ``test/`` folder.

* :func:`leaf_femnist`: ``x`` float32 ``[n, 28, 28]``, ``y`` int32 in
  ``[0, 62)``. LEAF writes ``gray / 255`` of the NIST scans
  (``data/femnist/preprocess/data_to_json.py``): values in ``[0, 1]`` with
  1.0 = white background, the same convention as TFF's federated EMNIST
  (which was derived from LEAF); ``invert=True`` gives ``1 - x``.
* :func:`leaf_shakespeare`: ``x`` int32 ``[n, 80]`` (LEAF's 80-character
  snippets), ``y`` int32 ``[n]`` (the next character), as ids of FedJAX's
  Shakespeare vocabulary (``fedjax/datasets/shakespeare.py``, itself TFF's
  text-generation tutorial vocabulary): 0 pad, 1 begin, 2 end, 3-88 the 86
  characters of :data:`SHAKESPEARE_CHARS`, 89 out of vocabulary; LEAF's
  ``>`` and ``}`` are out of FedJAX's vocabulary. Ids are per character.
* :func:`leaf_sent140`: ``x`` int32 ``[n, max_len]`` word ids, ``y`` int32
  sentiment (0 negative, 1 positive). The text is field 4 of LEAF's record
  (``[id, date, query, user, text]``, ``data/sent140/preprocess/
  data_to_json.py``), lower-cased and split with LEAF's word pattern
  ``[\\w']+|[.,!?;]`` (``models/utils/language_utils.py``); the first
  ``max_len`` (LEAF: 25) words are kept and the rest padded with id 0. The
  vocabulary is built from the TRAIN split only: 0 ``<pad>``, 1 ``<unk>``
  (any other word, and every test word not seen in train), then words by
  decreasing train frequency, ties in string order, up to ``vocab_size`` ids
  in all. (LEAF itself uses a GloVe vocabulary, not shipped here.)

Example (a tiny FEMNIST-format folder):

  >>> import json, os, tempfile
  >>> root = tempfile.mkdtemp()
  >>> for split, users in (('train', {'w1': 2, 'w2': 1}), ('test', {'w1': 1})):
  ...   os.makedirs(os.path.join(root, split))
  ...   data = {'users': list(users), 'num_samples': list(users.values()),
  ...           'user_data': {u: {'x': [[1.0] * 784] * n, 'y': [7] * n}
  ...                         for u, n in users.items()}}
  ...   with open(os.path.join(root, split, 'part_0.json'), 'w') as f:
  ...     json.dump(data, f)
  >>> train, test = leaf_femnist(data_dir=root)
  >>> train.client_ids.tolist(), train.sizes.tolist(), test.sizes.tolist()
  (['w1', 'w2'], [2, 1], [1, 0])
  >>> train.features['x'].shape, train.features['y'].tolist()
  ((3, 28, 28), [7, 7, 7])
"""

import glob
import json
import os
import re
from typing import Callable, Mapping

import numpy as np

from fedjax_engine.data import FederatedData
from fedjax_engine.datasets import download

FEMNIST_NUM_CLASSES = 62
FEMNIST_IMAGE_SHAPE = (28, 28)
SHAKESPEARE_SEQ_LEN = 80
SENT140_MAX_LEN = 25
SENT140_NUM_CLASSES = 2
SENT140_VOCAB_SIZE = 10000

# FedJAX's Shakespeare vocabulary, from the project's Shakespeare loader so
# the two always agree: character i of the vocabulary has id 3 + i.
from fedjax_engine.datasets.shakespeare import BOS as SHAKESPEARE_BOS  # pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_engine.datasets.shakespeare import EOS as SHAKESPEARE_EOS  # pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_engine.datasets.shakespeare import OOV as SHAKESPEARE_OOV  # pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_engine.datasets.shakespeare import PAD as SHAKESPEARE_PAD  # pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_engine.datasets.shakespeare import VOCAB as _VOCAB  # pylint: disable=g-import-not-at-top,wrong-import-position
from fedjax_engine.datasets.shakespeare import VOCAB_SIZE as SHAKESPEARE_VOCAB_SIZE  # pylint: disable=g-import-not-at-top,wrong-import-position
SHAKESPEARE_CHARS = ''.join(_VOCAB)
_FIRST_CHAR_ID = SHAKESPEARE_OOV - len(SHAKESPEARE_CHARS)   # 3

SENT140_PAD, SENT140_UNK = 0, 1

_WORD = re.compile(r"[\w']+|[.,!?;]")


def _char_table():
  table = np.full(256, SHAKESPEARE_OOV, np.int32)
  for i, c in enumerate(SHAKESPEARE_CHARS):
    table[ord(c)] = _FIRST_CHAR_ID + i
  return table


_CHAR_TABLE = _char_table()


def shakespeare_char_ids(text: str) -> np.ndarray:
  """Ids of the characters of ``text`` (int32, one per character)."""
  points = np.frombuffer(text.encode('utf-32-le', errors='surrogatepass'),
                         '<u4')
  return np.where(points < 256, _CHAR_TABLE[np.minimum(points, 255)],
                  SHAKESPEARE_OOV).astype(np.int32)


# ---------------------------------------------------------------------------
# Reading and checking LEAF files.


def _split_files(data_dir: str | None, name: str):
  if data_dir is None:
    data_dir = os.path.join(download.cache_dir(), 'leaf', name)
  out = []
  for split in ('train', 'test'):
    folder = os.path.join(data_dir, split)
    if not os.path.isdir(folder):
      raise FileNotFoundError(
          f'LEAF {name}: the {split} split is missing: no folder {folder}. '
          f'data_dir must hold train/ and test/ as written by LEAF\'s '
          f'preprocess.sh (leaf/data/{name}/data).')
    files = sorted(glob.glob(os.path.join(folder, '*.json')))
    if not files:
      raise FileNotFoundError(f'LEAF {name}: the {split} split is missing: '
                              f'{folder} holds no *.json file.')
    out.append(files)
  return out


def _load_json(path: str):
  try:
    with open(path, 'rb') as f:
      return json.load(f)
  except (ValueError, UnicodeDecodeError) as e:   # JSONDecodeError included
    raise ValueError(f'{path} is not valid JSON (truncated or corrupt?): '
                     f'{e}') from e


def _read_head(path: str):
  """``users`` and ``num_samples`` of a LEAF file, parsing no sample.

  ``json.dump`` writes LEAF's keys in the order users, (hierarchies),
  num_samples, user_data, so the text before ``"user_data"`` closed with
  ``}`` is a JSON object of the counts. Any other layout falls back to
  parsing the whole file.
  """
  head = bytearray()
  with open(path, 'rb') as f:
    while True:
      block = f.read(1 << 16)
      if not block:
        break
      start = max(0, len(head) - len(b'"user_data"'))
      head.extend(block)
      at = head.find(b'"user_data"', start)
      if at >= 0:
        prefix = bytes(head[:at]).rstrip().rstrip(b',') + b'}'
        try:
          data = json.loads(prefix)
        except (ValueError, UnicodeDecodeError):
          break
        if isinstance(data, dict) and 'users' in data and (
            'num_samples' in data):
          return data
        break
  return _load_json(path)


def _check_head(path: str, data) -> list:
  """``[(user, num_samples)]`` of a LEAF file, checked."""
  if not isinstance(data, dict):
    raise ValueError(f'{path}: expected a JSON object with users, num_samples '
                     f'and user_data, got {type(data).__name__}.')
  for key in ('users', 'num_samples'):
    if not isinstance(data.get(key), list):
      raise ValueError(f'{path}: no "{key}" list.')
  users, counts = data['users'], data['num_samples']
  if len(users) != len(counts):
    raise ValueError(f'{path}: {len(users)} users but {len(counts)} '
                     'num_samples.')
  seen = set()
  for user, n in zip(users, counts):
    if not isinstance(user, str):
      raise ValueError(f'{path}: user name {user!r} is not a string.')
    if user in seen:
      raise ValueError(f'{path}: user {user!r} is listed twice.')
    seen.add(user)
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
      raise ValueError(f'{path}: user {user!r} has num_samples {n!r}, not a '
                       'count.')
    if n == 0:
      raise ValueError(f'{path}: user {user!r} is listed with 0 samples; '
                       'LEAF lists only users that have samples.')
  return list(zip(users, counts))


def _user_samples(path: str, data, head: list):
  """Yields ``(user, x, y)`` of a parsed file, checked against ``head``."""
  if _check_head(path, data) != head:
    raise ValueError(f'{path}: users or num_samples changed between reads.')
  user_data = data.get('user_data')
  if not isinstance(user_data, dict):
    raise ValueError(f'{path}: no "user_data" object.')
  listed = {u for u, _ in head}
  for user, entry in user_data.items():
    if user not in listed and (
        not isinstance(entry, dict) or entry.get('x') or entry.get('y')):
      raise ValueError(f'{path}: user_data holds samples of user {user!r}, '
                       'who is not in "users".')
  for user, n in head:
    entry = user_data.get(user)
    if not isinstance(entry, dict):
      raise ValueError(f'{path}: user {user!r} is listed but has no entry in '
                       'user_data.')
    x, y = entry.get('x'), entry.get('y')
    if not isinstance(x, list) or not isinstance(y, list):
      raise ValueError(f'{path}: user {user!r} lacks an "x" or "y" list.')
    if len(x) != n or len(y) != n:
      raise ValueError(f'{path}: user {user!r} has num_samples {n} but '
                       f'{len(x)} x and {len(y)} y.')
    yield user, x, y


def _heads(files):
  """``{user: (path, n)}`` over a split's files, from their heads."""
  owner = {}
  for path in files:
    for user, n in _check_head(path, _read_head(path)):
      if user in owner:
        raise ValueError(f'user {user!r} appears in both {owner[user][0]} and '
                         f'{path}.')
      owner[user] = (path, n)
  return owner


def read_leaf(train_dir: str, test_dir: str):
  """The raw LEAF data of two folders: ``({user: {'x', 'y'}}, {...})``.

  Every ``*.json`` file of each folder is parsed and checked as the loaders
  check it (valid JSON, ``num_samples`` matching ``user_data``, no empty or
  duplicated user); ``x`` and ``y`` are LEAF's lists, unconverted. This holds
  whole files as Python objects, so it suits inspection and small data; the
  loaders stream into preallocated arrays instead.
  """
  out = []
  for folder in (train_dir, test_dir):
    if not os.path.isdir(folder):
      raise FileNotFoundError(f'LEAF split folder {folder} does not exist.')
    files = sorted(glob.glob(os.path.join(folder, '*.json')))
    if not files:
      raise FileNotFoundError(f'{folder} holds no *.json file.')
    users, where = {}, {}
    for path in files:
      data = _load_json(path)
      for user, x, y in _user_samples(path, data, _check_head(path, data)):
        if user in users:
          raise ValueError(f'user {user!r} appears in both {where[user]} and '
                           f'{path}.')
        users[user], where[user] = {'x': x, 'y': y}, path
    out.append(users)
  return tuple(out)


Converter = Callable[[str, str, list, list, Mapping[str, np.ndarray]], None]


def _load_split(owner, ids, specs, convert: Converter) -> FederatedData:
  """Reads one split into preallocated arrays ``specs: name -> (shape, dtype)``.

  ``convert(path, user, x, y, out)`` writes one user's samples into ``out``,
  views of each feature's rows for that user.
  """
  sizes = np.array([owner[u][1] if u in owner else 0 for u in ids], np.int64)
  offsets = np.concatenate([[0], np.cumsum(sizes)])
  total = int(offsets[-1])
  features = {name: np.empty((total,) + tuple(shape), dtype)
              for name, (shape, dtype) in specs.items()}
  row = {u: k for k, u in enumerate(ids)}
  by_file = {}
  for user, (path, n) in owner.items():
    by_file.setdefault(path, []).append((user, n))
  for path in sorted(by_file):
    data = _load_json(path)
    head = _check_head(path, data)
    if sorted(head) != sorted(by_file[path]):
      raise ValueError(f'{path}: users or num_samples changed between reads.')
    for user, x, y in _user_samples(path, data, head):
      k = row[user]
      lo, hi = int(offsets[k]), int(offsets[k + 1])
      convert(path, user, x, y, {n: v[lo:hi] for n, v in features.items()})
    del data
  return FederatedData(features, offsets, np.asarray(ids))


def _prepare(data_dir, name):
  train_files, test_files = _split_files(data_dir, name)
  train_owner, test_owner = _heads(train_files), _heads(test_files)
  ids = sorted(set(train_owner) | set(test_owner))
  return ids, train_owner, test_owner


def _int_labels(path, user, y, num_classes):
  labels = np.asarray(y)
  if labels.ndim != 1 or labels.dtype.kind not in 'iu':
    raise ValueError(f'{path}: user {user!r} has labels that are not integers '
                     f'(dtype {labels.dtype}, shape {labels.shape}).')
  bad = (labels < 0) | (labels >= num_classes)
  if bad.any():
    raise ValueError(f'{path}: user {user!r} has label {labels[bad][0]}, '
                     f'outside [0, {num_classes}).')
  return labels


# ---------------------------------------------------------------------------
# The three datasets.


def leaf_femnist(*, data_dir: str | None = None, invert: bool = False):
  """LEAF FEMNIST: handwritten digits and letters by writer, 62 classes.

  Args:
    data_dir: the folder holding LEAF's ``train/`` and ``test/``.
    invert: return ``1 - x`` (0.0 background) instead of LEAF's values
      (1.0 background).

  Returns:
    ``(train, test)`` FederatedData, ``x`` float32 ``[n, 28, 28]`` in
    ``[0, 1]``, ``y`` int32 in ``[0, 62)`` (0-9 digits, 10-35 A-Z, 36-61
    a-z, LEAF's ``relabel_class``).
  """
  ids, train_owner, test_owner = _prepare(data_dir, 'femnist')
  pixels = FEMNIST_IMAGE_SHAPE[0] * FEMNIST_IMAGE_SHAPE[1]

  def convert(path, user, x, y, out):
    try:
      images = np.asarray(x, dtype=np.float32)
    except (ValueError, TypeError) as e:
      raise ValueError(f'{path}: user {user!r} has x that is not a list of '
                       f'{pixels}-number lists: {e}') from e
    if images.shape != (len(x), pixels):
      raise ValueError(f'{path}: user {user!r} has images of shape '
                       f'{images.shape[1:]}, expected ({pixels},) (28 x 28).')
    if not (images.min() >= 0.0 and images.max() <= 1.0):
      raise ValueError(f'{path}: user {user!r} has pixel values outside '
                       '[0, 1] (or NaN).')
    out['x'][...] = images.reshape((-1,) + FEMNIST_IMAGE_SHAPE)
    out['y'][...] = _int_labels(path, user, y, FEMNIST_NUM_CLASSES)

  specs = {'x': (FEMNIST_IMAGE_SHAPE, np.float32), 'y': ((), np.int32)}
  splits = tuple(_load_split(owner, ids, specs, convert)
                 for owner in (train_owner, test_owner))
  if invert:
    for data in splits:
      np.subtract(np.float32(1), data.features['x'], out=data.features['x'])
  return splits


def leaf_shakespeare(*, data_dir: str | None = None,
                     seq_len: int = SHAKESPEARE_SEQ_LEN):
  """LEAF Shakespeare: next-character prediction by speaking role.

  Args:
    data_dir: the folder holding LEAF's ``train/`` and ``test/``.
    seq_len: the length of every ``x`` snippet (LEAF writes 80).

  Returns:
    ``(train, test)`` FederatedData, ``x`` int32 ``[n, seq_len]`` and ``y``
    int32 ``[n]``, ids in ``[0, SHAKESPEARE_VOCAB_SIZE)`` (see the module
    docstring; out-of-vocabulary characters get ``SHAKESPEARE_OOV``).
  """
  ids, train_owner, test_owner = _prepare(data_dir, 'shakespeare')

  def convert(path, user, x, y, out):
    for s in x:
      if not isinstance(s, str) or len(s) != seq_len:
        raise ValueError(f'{path}: user {user!r} has an x that is not a '
                         f'string of {seq_len} characters: {s!r:.100}.')
    for c in y:
      if not isinstance(c, str) or len(c) != 1:
        raise ValueError(f'{path}: user {user!r} has a y that is not one '
                         f'character: {c!r:.100}.')
    out['x'][...] = shakespeare_char_ids(''.join(x)).reshape(-1, seq_len)
    out['y'][...] = shakespeare_char_ids(''.join(y))

  specs = {'x': ((seq_len,), np.int32), 'y': ((), np.int32)}
  return tuple(_load_split(owner, ids, specs, convert)
               for owner in (train_owner, test_owner))


def sent140_words(text: str) -> list:
  """The words of a tweet: lower-cased, split with LEAF's pattern."""
  return _WORD.findall(text.lower())


def leaf_sent140(*, data_dir: str | None = None,
                 max_len: int = SENT140_MAX_LEN,
                 vocab_size: int | None = SENT140_VOCAB_SIZE,
                 return_vocab: bool = False):
  """LEAF Sent140: tweet sentiment by Twitter user, 2 classes.

  Args:
    data_dir: the folder holding LEAF's ``train/`` and ``test/``.
    max_len: words kept per tweet (LEAF: 25); shorter tweets are padded
      with 0 at the end.
    vocab_size: the number of ids, pad and unknown included (None: every
      word of the train split).
    return_vocab: also return the vocabulary, a list whose item ``i`` is
      the word of id ``i`` (``'<pad>'``, ``'<unk>'``, then the words).

  Returns:
    ``(train, test)`` (or ``(train, test, vocab)``) FederatedData with ``x``
    int32 ``[n, max_len]`` word ids and ``y`` int32 in ``{0, 1}``.
  """
  if max_len < 1:
    raise ValueError(f'max_len must be positive, got {max_len}.')
  if vocab_size is not None and vocab_size < 2:
    raise ValueError(f'vocab_size must be at least 2 (pad and unknown), got '
                     f'{vocab_size}.')
  ids, train_owner, test_owner = _prepare(data_dir, 'sent140')
  specs = {'x': ((max_len,), np.int32), 'y': ((), np.int32)}

  def texts(path, user, x):
    for record in x:
      if (not isinstance(record, list) or len(record) < 5 or
          not isinstance(record[4], str)):
        raise ValueError(f'{path}: user {user!r} has an x that is not a LEAF '
                         f'record with the text at index 4: {record!r:.200}.')
      yield record[4]

  # Train: provisional ids (first seen, + 1 so 0 stays padding) and counts.
  provisional, counts = {}, []

  def convert_train(path, user, x, y, out):
    out['x'][...] = SENT140_PAD
    for row, text in enumerate(texts(path, user, x)):
      pids = []
      for word in sent140_words(text):
        pid = provisional.get(word)
        if pid is None:
          pid = provisional[word] = len(counts)
          counts.append(0)
        counts[pid] += 1
        pids.append(pid + 1)
      kept = pids[:max_len]
      out['x'][row, :len(kept)] = kept
    out['y'][...] = _int_labels(path, user, y, SENT140_NUM_CLASSES)

  train = _load_split(train_owner, ids, specs, convert_train)
  words = list(provisional)
  order = sorted(range(len(words)), key=lambda i: (-counts[i], words[i]))
  if vocab_size is not None:
    order = order[:vocab_size - 2]
  lookup = np.full(len(words) + 1, SENT140_UNK, np.int32)
  lookup[0] = SENT140_PAD
  lookup[np.asarray(order, np.int64) + 1] = np.arange(2, 2 + len(order),
                                                      dtype=np.int32)
  np.take(lookup, train.features['x'], out=train.features['x'])
  vocab = ['<pad>', '<unk>'] + [words[i] for i in order]
  word_id = {w: i for i, w in enumerate(vocab) if i >= 2}

  def convert_test(path, user, x, y, out):
    out['x'][...] = SENT140_PAD
    for row, text in enumerate(texts(path, user, x)):
      kept = [word_id.get(w, SENT140_UNK) for w in sent140_words(text)[:max_len]]
      out['x'][row, :len(kept)] = kept
    out['y'][...] = _int_labels(path, user, y, SENT140_NUM_CLASSES)

  test = _load_split(test_owner, ids, specs, convert_test)
  return (train, test, vocab) if return_vocab else (train, test)
