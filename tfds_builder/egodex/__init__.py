"""The EgoDex TFDS builder (`tfds build tfds_builder/egodex` or `python -m tfds_builder.egodex`)."""
