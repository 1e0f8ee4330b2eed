"""The run: one resumable run class on one process or every ``torchrun`` rank (:mod:`apis.loop.run`), what it
acquires at each step (:mod:`apis.loop.acquisition`), its schedule and run directory, and what reads a run."""
