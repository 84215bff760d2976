"""MLflow and the files a run leaves: may import `parallel`, `core`, `runtime`, `config` and `errors`.

- `tracker`: one study's experiment, its runs, metrics, files, models and registry (`Tracker`).
- `store_template`, `relocate`: a new store copied from a cached migrated one; a moved folder's store
  pointed at its own artifacts.
- `ui`: `unet-opt ui` and the links to each study's ranked runs table.
- `report_files`, `plots`: a run's report files and figures, from plain arrays.
- `writer`: the background process that draws and logs a run's files.
"""
