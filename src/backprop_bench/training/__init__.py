"""One run: the training loop, its schedules and callbacks, stop signals, the Hydra config, one run end to end."""
