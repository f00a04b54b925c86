"""Insight into backbones and runs, beyond a single probe.

- `estimates`: LogME, LEEP and ImageNet task similarity of a backbone's features;
  `transferability.rank_backbones` ranks backbones on a folder with them before any
  training (`transferlab rank`).
- `embed`: PCA / UMAP / t-SNE maps, silhouettes and outliers of a run or a folder
  (`transferlab embed`); `feature_maps.embed` draws them from a feature matrix and
  `map_methods` holds the projections and statistics.
- `compare`: several finished runs side by side, as text and a sortable HTML table
  (`transferlab compare`).
Submodules are imported explicitly; this package imports nothing heavy by itself.
"""
