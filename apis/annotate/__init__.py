"""``apis annotate``: the web page on which people answer a run's point questions (docs/annotate.md)."""
