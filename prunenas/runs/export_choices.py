"""What ``prunenas export`` offers: its file formats and the metrics ``--best`` ranks on (no torch here: the
command line's parser reads them for ``--help``)."""

FORMATS = ("json", "safetensors", "onnx", "pt2")
SUFFIXES = {"json": ".json", "safetensors": ".safetensors", "onnx": ".onnx", "pt2": ".pt2"}
# Metrics --best may rank on, and whether higher is better. Validation only: test accuracy is for the report.
SELECTION_METRICS = {"val_acc": True, "val_loss": False}
