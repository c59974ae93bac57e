"""Any head on any backbone: `configs/egodex.py:head=fm,backbone=encdec[,demo,...]` (common.py)."""

from configs import common


def get_config(arg=None):
  return common.get_config(arg)
