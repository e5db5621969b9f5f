"""Training: the loop (loop), checkpoints, the learning-rate plan (schedule), the compiled steps, the model and devices."""
