"""Baselines measured in the same run as the figures: what the machine and the libraries
underneath can do at best, so each figure is also read as a ratio to its bound."""
