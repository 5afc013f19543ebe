"""Hyperparameters that live in the server state, so runs can differ in them.

A learning rate is usually a Python constant closed over by an optax
optimizer, so two runs with different rates are two programs. :func:`tunable`
moves chosen hyperparameters into the server state: its algorithm rebuilds
the wrapped one, inside the compiled round, from the values its state
holds. Runs that differ only in those values then share one program, and
:func:`fedjax_engine.sweep.run_sweep` vmaps a learning-rate grid (with
seeds) over them.

``make_algorithm(**values)`` must build the same structure for every value:
the same aggregator, client-state table and transforms; only numbers
inside the functions may depend on the values (a learning rate as optax
takes it, a proximal weight). It is called with floats once, for that
structure, and then with traced float32 scalars.

Example (FedAvg whose client learning rate is in the state):

  >>> import jax, optax, fedjax_engine as fe
  >>> model = fe.models.logistic_regression(num_features=4, num_classes=2)
  >>> def make(client_lr):
  ...   return fe.algorithms.fedavg(model,
  ...                               client_optimizer=optax.sgd(client_lr))
  >>> state = tunable(make, client_lr=0.1).init(model.init(jax.random.key(0)))
  >>> round(float(state.values['client_lr']), 4)
  0.1
"""

from typing import Any, Callable, Mapping, NamedTuple

import jax.numpy as jnp

from fedjax_engine import algorithm as algorithm_lib

PyTree = Any


class TunedState(NamedTuple):
  """The wrapped algorithm's server state (``inner``) and the
  hyperparameters it is built with (``values``, float32 scalars).
  ``params`` and ``round`` are the wrapped state's."""
  inner: PyTree
  values: Mapping[str, Any]

  @property
  def params(self):
    return self.inner.params

  @property
  def round(self):
    return self.inner.round


def check_values(values: Mapping[str, Any]) -> dict[str, float]:
  """``values`` as floats; a ValueError names one that is not a finite
  number."""
  if not values:
    raise ValueError('tunable needs at least one hyperparameter value.')
  out = {}
  for name, value in values.items():
    try:
      out[name] = float(value)
    except (TypeError, ValueError):
      raise ValueError(f'hyperparameter {name}={value!r} is not a number.'
                       ) from None
    if not jnp.isfinite(out[name]):
      raise ValueError(f'hyperparameter {name}={value!r} is not finite.')
  return out


def tunable(make_algorithm: Callable[..., algorithm_lib.Algorithm],
            **values: float) -> algorithm_lib.Algorithm:
  """``make_algorithm(**values)`` with ``values`` kept in its server state.

  The returned algorithm's ``init`` stores ``values`` (float32) in a
  :class:`TunedState`; every other function rebuilds the algorithm from the
  values of the state it is given. Two ``tunable`` algorithms of one
  ``make_algorithm`` with different values have the same functions, so the
  engine compiles a round once for both, and a sweep stacks their states.

  Raises:
    ValueError: a value is not a finite number, or none is given.
  """
  values = check_values(values)
  example = make_algorithm(**values)

  def built(state):
    return make_algorithm(**state.values)

  def init(params):
    return TunedState(example.init(params),
                      {k: jnp.float32(v) for k, v in values.items()})

  def client_update(state, row, batches, example_mask, key):
    return built(state).client_update(state.inner, row, batches,
                                      example_mask, key)

  def server_update(state, aggregate, info):
    return state._replace(
        inner=built(state).server_update(state.inner, aggregate, info))

  transform = None
  if example.transform is not None:
    def transform(state, output, row, key, client):
      return built(state).transform(state.inner, output, row, key, client)

  personalize = None
  if example.personalize is not None:
    def personalize(state, row, batches, example_mask, key):
      return built(state).personalize(state.inner, row, batches,
                                      example_mask, key)

  prepare = None
  if example.prepare is not None:
    def prepare_client(state, row, batches, example_mask, key):
      return built(state).prepare.client(state.inner, row, batches,
                                         example_mask, key)

    def prepare_server(state, aggregate, info):
      return state._replace(inner=built(state).prepare.server(
          state.inner, aggregate, info))

    prepare = algorithm_lib.Prepare(prepare_client, prepare_server,
                                    example.prepare.aggregator)

  server_metrics = None
  if example.server_metrics is not None:
    def server_metrics(state):
      return built(state).server_metrics(state.inner)

  return algorithm_lib.Algorithm(
      init=init, client_update=client_update, server_update=server_update,
      aggregator=example.aggregator,
      init_client_state=example.init_client_state, personalize=personalize,
      prepare=prepare, transform=transform, server_metrics=server_metrics)
