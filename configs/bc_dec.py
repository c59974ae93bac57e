"""BC head on the dec backbone. Args: configs/common.py (e.g. `:demo`, `:h=30,goal`)."""

from configs import common


def get_config(arg=None):
  return common.get_config(arg, head='bc', backbone='dec')
