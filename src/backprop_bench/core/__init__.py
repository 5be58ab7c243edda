"""What every stage shares, importing nothing else of the project: specs, checks, files, the dataset."""
