"""Pytree arithmetic, including over stacked trees (a leading client axis).

Every function here is pure and jittable. "Stacked" trees carry a leading axis
of clients on every leaf, as produced by ``jax.vmap`` over ``client_update``.

Example:

  >>> import jax.numpy as jnp
  >>> deltas = stack([{'w': jnp.ones(2)}, {'w': jnp.array([3., -1.])}])
  >>> weighted_sum(deltas, jnp.array([0.75, 0.25]))['w'].tolist()
  [1.5, 0.5]
  >>> first, second = unstack(deltas)
  >>> round(float(l2_norm(sub(second, first))), 4)
  2.8284
"""

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def add(a: PyTree, b: PyTree) -> PyTree:
  return jax.tree.map(jnp.add, a, b)


def sub(a: PyTree, b: PyTree) -> PyTree:
  return jax.tree.map(jnp.subtract, a, b)


def scale(tree: PyTree, factor) -> PyTree:
  return jax.tree.map(lambda x: x * factor, tree)


def zeros_like(tree: PyTree) -> PyTree:
  return jax.tree.map(jnp.zeros_like, tree)


def where(pred, on_true: PyTree, on_false: PyTree) -> PyTree:
  """Elementwise select with a scalar predicate broadcast to every leaf."""
  return jax.tree.map(lambda t, f: jnp.where(pred, t, f), on_true, on_false)


def l2_norm(tree: PyTree):
  """Global L2 norm over all leaves."""
  leaves = jax.tree.leaves(tree)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in leaves))


def weighted_sum(stacked: PyTree, weights) -> PyTree:
  """Sum over the leading axis with weights: ``sum_c weights[c] * tree[c]``.

  Written as a contraction so XLA emits one reduction per leaf; padded clients
  carry weight 0 and drop out.
  """
  def leaf_sum(x):
    w = weights.astype(x.dtype)
    return jnp.tensordot(w, x, axes=(0, 0))
  return jax.tree.map(leaf_sum, stacked)


def stack(trees) -> PyTree:
  """Stacks a sequence of identically structured trees on a new leading axis."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(stacked: PyTree) -> list:
  """Inverse of :func:`stack`: a list of trees, one per leading index."""
  leaves, treedef = jax.tree.flatten(stacked)
  n = leaves[0].shape[0] if leaves else 0
  return [treedef.unflatten([x[i] for x in leaves]) for i in range(n)]


def size(tree: PyTree) -> int:
  """Total number of scalars in the tree (static)."""
  return sum(int(x.size) for x in jax.tree.leaves(tree))
