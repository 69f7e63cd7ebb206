"""Data formats: annotations, feature files, datasets and the synthetic generator."""
