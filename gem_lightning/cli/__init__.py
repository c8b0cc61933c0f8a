"""The commands (prepare, sweep, predict, evaluate, adapt, export, web, bench) on one front end: argument parsing,
logging, the library noise kept quiet, one line and one exit status for each user error.

Imports any package; nothing imports it but train.py and sweep.py.
"""
