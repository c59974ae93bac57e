"""The names both sides of the dataset agree on: the builder (tfds_builder/egodex) writes them,
the reader (egodex_jax.data.pipeline) looks for them.

A build directory `DATA_DIR/egodex/<config>/<RECORD_VERSION>/` holds TFDS's dataset_info.json and
shards, and beside them the files below (their contents: docs/interfaces.md).
"""

META_FILE = "egodex_meta.json"  # vocabularies, max_horizon, image_size, per-split episode tables
STATS_FILE = "norm_stats.json"  # normalisation statistics of the train split
SKIPPED_FILE = "skipped_episodes.json"  # [{path, reason}], one per broken raw episode
# Per split: every record's `confidence` [12] in record order, raw little-endian float32
# [num_records, 12] (the future frames' confidences without reading their records).
CONFIDENCE_FILE = "confidence-{split}.f32"
# The record layout the reader understands; the builder's VERSION is this string, so a build
# from another layout is refused by `pipeline.load_metadata` instead of being misread.
RECORD_VERSION = "1.1.0"
