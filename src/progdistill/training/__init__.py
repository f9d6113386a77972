"""Teacher training and distillation rounds over one training phase (phase.py) and its loop."""
