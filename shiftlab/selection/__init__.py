"""Model selection: unsupervised validators (``validators``) and the rules that pick an epoch and
hyperparameters per table cell (``rules``)."""
