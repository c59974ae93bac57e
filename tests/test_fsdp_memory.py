"""benchmarks/fsdp_memory.py at the tiny size on the 8-device mesh: the compiled step's
per-device state bytes are ~1/8 of the whole (<= 1/6), and 3 steps compile once."""

from benchmarks import fsdp_memory
from benchmarks import step_setup
from egodex_jax import sharding

MIN_SHARD = 256  # tiny's kernels are a few hundred elements: the paper's 2**14 shards none


def test_fsdp_state_bytes_and_compile_once():
  setup = step_setup.build('tiny', image_size=16, horizon=4, batch_size=8)
  mesh = sharding.make_mesh(8)
  assert dict(mesh.shape) == {'data': 1, 'fsdp': 8}
  _, shardings = setup.abstract_state(mesh, MIN_SHARD)
  step, traces = fsdp_memory.counted_step(setup, mesh, shardings)

  r = fsdp_memory.state_memory(setup, mesh, 8, MIN_SHARD, step=step)
  # The compiler's figure (arguments less the batch shard) is the shardings' to the byte.
  assert r['state_bytes_per_device'] == r['state_bytes_per_device_from_shardings']
  assert r['ratio'] <= 1 / 6 and r['at_most_one_sixth']
  assert r['state_bytes_per_device'] >= r['state_bytes_unsharded'] // 8
  assert r['replicated_param_bytes'] < 0.05 * r['state_bytes_unsharded']
  assert r['same_out_as_in']
  # Donation: the new state reuses the old one's buffers.
  assert r['memory_analysis']['alias_size_in_bytes'] >= r['state_bytes_per_device'] * 0.9

  # Without FSDP every device holds the whole state (what the ratio is measured against).
  abstract_1, _ = setup.abstract_state(sharding.make_mesh(1), MIN_SHARD)
  assert step_setup.tree_bytes(abstract_1, per_device=True) == r['state_bytes_unsharded']

  once = fsdp_memory.compiles_once(setup, mesh, step, traces, shardings, steps=3)
  assert once['step'] == 3 and len(once['losses']) == 3
  assert once['traces'] == 1 and once['cache_size'] in (1, None) and once['compiled_once']
