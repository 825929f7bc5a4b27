"""Using trained weights: evaluation, prediction, export and INT8 quantization."""
