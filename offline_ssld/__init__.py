"""offline-ssld: run the SSLD teacher once, store multi-view soft labels, train students fast."""

import logging
import os
import warnings

__version__ = "0.1.0"  # the one place the version is written: setup.cfg reads it (attr:)


class _DropMessages(logging.Filter):
    """Drops log records whose message holds one of `fragments`. A filter, not a level:
    paddleclas resets its logger's level to INFO when it is imported."""

    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def _silence_dependencies() -> None:
    """Keep the dependencies' import-time noise out of our output, before they are imported.

    Each line named here is printed on every run and tells the user nothing they can act on;
    anything else the dependencies say still shows.
    """
    # Paddle's C++ INFO/WARNING log lines (glog reads this when paddle is first imported).
    os.environ.setdefault("GLOG_minloglevel", "2")
    # Paddle checks for ccache on import, for compiling custom C++ ops, which we never do.
    warnings.filterwarnings(
        "ignore", message="No ccache found", category=UserWarning, module="paddle.utils"
    )
    # Paddle, on every train-mode forward of a BatchNorm2D: a note about a changed default.
    warnings.filterwarnings(
        "ignore",
        message="When training, we now always track global mean and variance",
        category=UserWarning,
        module="paddle.nn.layer.norm",
    )
    # paddleclas imports faiss (for retrieval, unused here), which logs its CPU variant at INFO.
    logging.getLogger("faiss").setLevel(logging.WARNING)
    # paddleclas's own backbones (ResNet, MobileNetV3, ...) call its deprecated init_res.
    logging.getLogger("ppcls").addFilter(_DropMessages('"init_res" will be deprecated'))


_silence_dependencies()
