"""Data stages: `download` (any source -> canonical raw CSVs) and `preprocess` (validated,
scaled, split .npz). `formats` holds the CSV / IDX readers and writers they share."""
