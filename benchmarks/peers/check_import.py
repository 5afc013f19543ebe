"""Imports a peer's packages and prints their versions (setup.sh's check)."""

import importlib
import importlib.metadata

PACKAGES = {
    'fedjax': ('fedjax', 'jax', 'jaxlib', 'haiku', 'optax'),
    'pfl': ('pfl', 'torch'),
    'flower': ('flwr', 'ray', 'torch'),
}
DISTS = {'haiku': 'dm-haiku'}


def main(peer):
  for name in PACKAGES[peer]:
    importlib.import_module(name)
    print(f'  {name} {importlib.metadata.version(DISTS.get(name, name))}')
