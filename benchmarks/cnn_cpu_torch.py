"""Plain-PyTorch FedAvg rounds of the EMNIST CNN: the baseline of cnn_cpu.py.

Run by ``benchmarks/cnn_cpu.py`` with another interpreter
(``--torch_python``), so PyTorch never shares a process with JAX. The
workload is the engine's (``benchmarks/workloads.py``): per client 10 local
SGD steps (lr 0.05) on batches of 20 EMNIST-shaped images, the model
conv3x3(32)-relu-conv3x3(64)-relu-maxpool2-dropout(0.25)-dense(128)-relu-
dropout(0.5)-dense(62), then the server applies the example-weighted mean
delta with SGD lr 1.0. Clients train one after another on one model, as a
PyTorch FedAvg loop does; the data are generated once, outside the timing.

Usage (prints one JSON line per timed round on stdout)::

  python cnn_cpu_torch.py --clients=10 --threads=2 --rounds=5
"""

import argparse
import json
import resource
import time

import numpy as np
import torch
from torch import nn

BATCH, STEPS, CLIENT_LR, SERVER_LR, CLASSES = 20, 10, 0.05, 1.0, 62


def make_model():
  return nn.Sequential(
      nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(),
      nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten(),
      nn.Linear(9216, 128), nn.ReLU(), nn.Dropout(0.5),
      nn.Linear(128, CLASSES))


def fedavg_round(server, client, xs, ys):
  """One round: every client from the server weights, then the mean delta."""
  server_params = [p.detach() for p in server.parameters()]
  total = [torch.zeros_like(p) for p in server_params]
  loss_fn = nn.CrossEntropyLoss()
  for c in range(xs.shape[0]):
    with torch.no_grad():
      for q, p in zip(client.parameters(), server_params):
        q.copy_(p)
    opt = torch.optim.SGD(client.parameters(), lr=CLIENT_LR)
    client.train()
    for s in range(STEPS):
      opt.zero_grad(set_to_none=True)
      loss_fn(client(xs[c, s]), ys[c, s]).backward()
      opt.step()
    with torch.no_grad():
      for t, p, q in zip(total, server_params, client.parameters()):
        t.add_(p - q)            # equal client weights: every client has 200
  with torch.no_grad():
    for p, t in zip(server.parameters(), total):
      p.sub_(SERVER_LR * t / xs.shape[0])


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--clients', type=int, default=10)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--rounds', type=int, default=3)
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  xs = torch.from_numpy(rng.random(
      (args.clients, STEPS, BATCH, 1, 28, 28), dtype=np.float32))
  ys = torch.from_numpy(rng.integers(0, CLASSES, (args.clients, STEPS, BATCH)))
  server, client = make_model(), make_model()
  fedavg_round(server, client, xs[:1], ys[:1])        # warm-up
  for r in range(args.rounds):
    t = time.perf_counter()
    fedavg_round(server, client, xs, ys)
    print(json.dumps(dict(
        impl='torch', clients=args.clients, threads=args.threads, round=r,
        round_s=time.perf_counter() - t, torch=torch.__version__,
        peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )), flush=True)


if __name__ == '__main__':
  main()
