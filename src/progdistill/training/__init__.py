"""Teacher training, distillation rounds, the shared loop and checkpoints."""
