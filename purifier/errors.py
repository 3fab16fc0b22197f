"""The one exception type for mistakes a user can fix: its message is one line saying what to do."""


class PurifierError(Exception):
    """A user-fixable error (missing data, bad image, wrong bundle). Printed as one line."""


class DataError(PurifierError):
    """A data set is missing or malformed."""


class BundleError(PurifierError):
    """A bundle directory is missing, incomplete, tampered with or of an unknown schema."""


class BadInputError(PurifierError):
    """Input a server must refuse with a 400; ``reason`` is a short code for metrics and clients."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ImageDecodeError(BadInputError):
    """Bytes that are not a decodable image of acceptable size."""

    def __init__(self, message: str, reason: str = "not_an_image") -> None:
        super().__init__(message, reason)


class RequestFormatError(BadInputError):
    """A request whose envelope cannot be read: malformed JSON, bad base64, a wrong tensor."""
