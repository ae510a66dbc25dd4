"""Other systems' dynamic MIG, simulated in the twin beside migopt: nos, HAMi and NVIDIA's DRA driver.

Each is one module (`nos.py`, `hami.py`, `dra.py`) whose docstring states what it models, from the sourced rules
of spec dynamic-mig-peers §4, and which latencies are guesses (settings under a scenario's `peers:`, `knobs.py`).
`registry.py` names them for `simulations.policies`.
"""
