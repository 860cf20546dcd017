"""Errors of car-onnx. The CLI turns any CarError into one line on stderr and a non-zero exit."""


class CarError(Exception):
    """Base class of every error the library raises on purpose."""


class InputError(CarError):
    """A dataset cannot be read: names the file, the place (line or record) and, where known, the field."""

    def __init__(self, path, where: str | None, message: str, field: str | None = None):
        self.path, self.where, self.field, self.reason = str(path), where, field, message
        parts = [self.path]
        if where:
            parts.append(where)
        if field:
            parts.append(f"field '{field}'")
        super().__init__(": ".join(parts + [message]))


class BundleError(CarError):
    """A model bundle is missing, incomplete, tampered with or of an unknown version."""


class UsageError(CarError):
    """An option or argument has a value outside what it accepts."""
