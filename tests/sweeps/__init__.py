"""sweep.py for real: Optuna studies in SQLite and PostgreSQL."""
