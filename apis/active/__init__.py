"""Active point selection: strategies, the simulated oracle and the annotation loop."""
