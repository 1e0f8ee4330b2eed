"""COCO-style evaluation (mask and box AP) and results files."""
