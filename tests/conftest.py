"""Fixtures shared by the test files (the environment itself is set in the root conftest.py)."""

import pytest

import helpers


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory):
  """6 short synthetic episodes at 64x48, built at 16 px with 8 future frames, once a session."""
  return helpers.build_synthetic_dataset(str(tmp_path_factory.getbasetemp() / 'egodex_tiny'))
