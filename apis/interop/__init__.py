"""Round trips with other annotation tools (docs/annotate.md)."""
