"""A run's identity and the files it leaves: the run key, metrics.json, history.csv, weights.npz, the study grid."""
