"""The one exception type for mistakes a user can fix: its message is one line saying what to do."""


def first_line(error: BaseException, limit: int = 200, end: bool = False) -> str:
    """The first line of a library's error message (its type's name when it has none): its first ``limit`` characters,
    or with ``end`` its last (ONNX Runtime puts the reason after a long source location)."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return line[-limit:] if end else line[:limit]


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
