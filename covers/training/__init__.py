"""Training: the epoch loop, runtime (device, AMP, seeds), losses, optimisers and schedules, metrics, lr finder."""
