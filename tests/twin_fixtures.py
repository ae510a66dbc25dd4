"""Timings and the mig-parted file the twin tests share."""

from simulations.twin.mig_manager import MigManagerTimings

T = MigManagerTimings(assert_s=5, pause_s=20, apply_per_gpu_s=3, restore_s=15)
CONFIG = """version: v1
mig-configs:
  all-disabled:
    - devices: all
      mig-enabled: false
  all-1g:
    - devices: all
      mig-enabled: true
      mig-devices: {"1g.5gb": 7}
  all-3g:
    - devices: all
      mig-enabled: true
      mig-devices: {"3g.20gb": 2}
  all-2g:
    - devices: all
      mig-enabled: true
      mig-devices: {"2g.10gb": 3}
  gpu0-3g:
    - devices: [0]
      mig-enabled: true
      mig-devices: {"3g.20gb": 2}
  gpu0-3g-gpu1-1g:
    - devices: [0]
      mig-enabled: true
      mig-devices: {"3g.20gb": 2}
    - devices: [1]
      mig-enabled: true
      mig-devices: {"1g.5gb": 7}
  all-a30:
    - devices: all
      mig-enabled: true
      mig-devices: {"1g.6gb": 4}
"""
