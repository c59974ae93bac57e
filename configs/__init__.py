"""Experiment configs: `get_config(arg)` functions (ml_collections), loaded by file path with
`--config=configs/<name>.py[:arg]`. `common.py` holds the one config; the model files name a
head and a backbone."""
