"""The configuration, the bottom layer: imports nothing of unet-opt's but `errors`.

- `schema`: the dataclasses (`DataConfig`, `ModelConfig`, `TrainConfig`, `SearchConfig`, `Config`, `Param`),
  the trial config (`Config.for_trial`), the metric and its direction (`SearchConfig.goal`), TOML output.
- `space_file`: space files, `--set`, stored configs of any version.
- `rules`: what a resolved config must keep, as a table of rules.
- `paths`: the project folder (`studies/`, `mlruns/`), store URLs, password redaction, files made whole.
"""
