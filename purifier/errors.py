"""The one exception type for mistakes a user can fix: its message is one line saying what to do."""


class PurifierError(Exception):
    """A user-fixable error (missing data, bad image, wrong bundle). Printed as one line."""


class DataError(PurifierError):
    """A data set is missing or malformed."""


class BundleError(PurifierError):
    """A bundle directory is missing, incomplete, tampered with or of an unknown schema."""


class ImageDecodeError(PurifierError):
    """Bytes that are not a decodable image of acceptable size."""
