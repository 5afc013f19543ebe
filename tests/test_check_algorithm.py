"""The public conformance check runs a plug-in, and catches a broken one."""

import jax
import jax.numpy as jnp
import optax
import pytest

import fedjax_engine as fe


def _scaled_fedavg(model):
  """A plug-in: FedAvg whose clients send half their update."""
  inner = fe.algorithms.fedavg(model, client_optimizer=optax.sgd(0.1))

  def client_update(server_state, client_state, batches, mask, key):
    delta, state, metrics = inner.client_update(server_state, client_state,
                                                batches, mask, key)
    return fe.tree.scale(delta, 0.5), state, metrics

  return inner._replace(client_update=client_update)


def test_a_correct_plugin_passes_every_check():
  passed = fe.testing.check_algorithm(_scaled_fedavg)
  assert passed == [
      'round equals a Python loop (device gather)',
      'no recompilation after the first round',
      'round equals a Python loop (host gather)',
      'masked steps and examples change nothing',
      'padded clients change nothing',
      'chunks of 1 change nothing',
      'chunks of 2 change nothing',
      'fused rounds equal rounds driven from Python',
      'same key, same result',
  ]


def _leaks_padding(model):
  """Broken: averages the batch's inputs without the example mask, so the
  padded examples' values leak into the update."""
  inner = fe.algorithms.fedavg(model, client_optimizer=optax.sgd(0.1))

  def client_update(server_state, client_state, batches, mask, key):
    delta, state, metrics = inner.client_update(server_state, client_state,
                                                batches, mask, key)
    leak = jnp.mean(batches['x']) * 1e-2
    return jax.tree.map(lambda d: d + leak, delta), state, metrics

  return inner._replace(client_update=client_update)


def test_a_plugin_that_reads_padding_fails_naming_the_check():
  with pytest.raises(AssertionError,
                     match='masked steps and examples change nothing'):
    fe.testing.check_algorithm(_leaks_padding)
