"""Export: a run written as ONNX, TFLite or SavedModel files, each checked against Keras (export), by its writer (writers)."""
