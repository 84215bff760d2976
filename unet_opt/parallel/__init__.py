"""Where runs train: may import `core`, `runtime`, `config` and `errors`.

- `placement`: a run's processes and devices (`--device`, `--gpus`, `--procs`), split between workers.
- `ranks`: the rank processes of a run on several devices, kept across a worker's runs (`RankGroup`).
- `processes`: this machine's processes: a worker's id, whether it is alive, dying with a parent.
- `servers`: the servers `unet-opt ui` runs (the MLflow UI, the live view) as one, stopped together.
"""
