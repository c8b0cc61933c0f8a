"""The predictor, predict command and ensembles."""
