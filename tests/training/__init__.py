"""train(cfg) and train.py as users run them, on every device setting."""
