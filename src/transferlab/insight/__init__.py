"""Insight into backbones and runs, beyond a single probe.

- `transferability`: LogME, LEEP and ImageNet task similarity; `rank_backbones` ranks
  backbones on a folder before any training (`transferlab rank`).
- `embed`: PCA / UMAP / t-SNE maps, silhouettes and outliers of a run or a folder
  (`transferlab embed`).
- `compare`: several finished runs side by side, as text and a sortable HTML table
  (`transferlab compare`).
Submodules are imported explicitly; this package imports nothing heavy by itself.
"""
