"""The names both sides of the dataset agree on: the builder (tfds_builder/egodex) writes them,
the reader (egodex_jax.data.pipeline) looks for them.

A build directory `DATA_DIR/egodex/<config>/<RECORD_VERSION>/` holds TFDS's dataset_info.json and
shards, and beside them the files below (their contents: docs/interfaces.md).
"""

META_FILE = "egodex_meta.json"  # vocabularies, max_horizon, image_size, per-split episode tables
STATS_FILE = "norm_stats.json"  # normalisation statistics of the train split
# {"skipped": [{path, reason}] per broken raw episode, "partial": [{path, frames_dropped, reason}]
# per kept episode with some frames dropped}
SKIPPED_FILE = "skipped_episodes.json"
# The record layout the builder writes; its VERSION is this string, so a build from a layout the
# reader does not know is refused by `pipeline.load_metadata` instead of being misread.
RECORD_VERSION = "1.2.0"
# Older layouts the reader still reads: 1.1.0 lacks the `padding` feature, which follows from
# its num_future (1.1.0 builds skipped every episode with a non-finite pose).
READABLE_VERSIONS = (RECORD_VERSION, "1.1.0")
# Per split: every record's `confidence` [12] in record order, raw little-endian float32
# [num_records, 12] (the future frames' confidences without reading their records).
CONFIDENCE_FILE = "confidence-{split}.f32"
