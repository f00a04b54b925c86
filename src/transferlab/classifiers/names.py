"""The classical heads' names, importable without scikit-learn (the CLI's help lists them).

`classifiers.heads` builds exactly these; a test keeps the two in step.
"""

CLASSIFIERS = ("logreg", "linear_svm", "random_forest", "knn", "mlp")
