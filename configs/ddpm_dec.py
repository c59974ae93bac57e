"""DDPM head on the dec backbone. Args: see configs/common.py (e.g. `:demo`, `:h=30,goal`)."""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    'egodex_configs_common', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'common.py'))
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def get_config(arg=None):
  return common.get_config(arg, head='ddpm', backbone='dec')
