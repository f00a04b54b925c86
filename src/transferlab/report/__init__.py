"""Reports: classification metrics, comparison with a published baseline, plots and a self-contained HTML page."""
