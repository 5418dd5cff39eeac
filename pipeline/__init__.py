"""Training-side code (loaders, models, objectives, training, evaluation); grows with the next issues."""
