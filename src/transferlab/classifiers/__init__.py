"""scikit-learn classifiers on extracted features, saved without pickle."""
