"""Error types. Every user-facing failure is one of these, with a message that names the
file, line or config key at fault, so the CLI can print one line instead of a traceback."""


class OfflineSSLDError(Exception):
    """Base class: the CLI prints these as `error: <message>` and exits with status 2."""


class ConfigError(OfflineSSLDError):
    """A config file or `-o` override is invalid; the message names the key path."""


class DataError(OfflineSSLDError):
    """A list file or image is invalid; the message names the list file and line or the image."""


class CacheError(OfflineSSLDError):
    """A cache is missing, damaged, stale or belongs to another teacher/dataset/transform."""
