"""Pictures and the one-file report of finished runs: `apis show` (:mod:`.gallery`) and `apis report` (:mod:`.html`)."""
