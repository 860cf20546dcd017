"""Errors of car-onnx. The CLI turns any CarError into one line on stderr and a non-zero exit."""


class CarError(Exception):
    """Base class of every error the library raises on purpose."""


class InputError(CarError):
    """A dataset cannot be read: names the file (or the Python container), the place (line, record or row) and,
    where known, the field."""

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


class UsageError(CarError, ValueError):
    """A parameter has a value outside what it accepts. The message names parameters as `{n1}` or `{force=True}`:
    str() shows the library's names (n1, force=True), the CLI puts its flags there (--n1, --force)."""

    def __init__(self, message: str, *params: str):
        self.template, self.params = message, params
        super().__init__(self.render(lambda name: name))

    def render(self, spell) -> str:
        """The message with each parameter spelled by `spell(name)`."""
        text = self.template
        for name in self.params:
            text = text.replace("{" + name + "}", spell(name))
        return text
