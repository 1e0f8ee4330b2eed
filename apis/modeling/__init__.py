"""CondInst: backbone, FPN, FCOS head, dynamic mask head, losses and inference."""
