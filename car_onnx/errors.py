"""Errors of car-onnx. The CLI turns any CarError into one line on stderr and a non-zero exit."""


class CarError(Exception):
    """Base class of every error the library raises on purpose. A message may name parameters as `{n1}` or
    `{force=True}` (listed in `params`): str() shows the library's names (n1, force=True), the CLI puts its flags
    there (--n1, --force)."""

    template: str = ""
    params: tuple = ()

    def __reduce__(self):
        """Pickled with its attributes (Ray and multiprocessing send errors between processes)."""
        return _restore, (type(self), self.args, self.__dict__)

    def render(self, spell) -> str:
        """The message with each parameter spelled by `spell(name)`."""
        text = self.template or str(self)
        for name in self.params:
            text = text.replace("{" + name + "}", spell(name))
        return text


class InputError(CarError):
    """A dataset cannot be read: names the file (or the Python container), the place (line, record or row) and,
    where known, the field."""

    def __init__(self, path, where: str | None, message: str, field: str | None = None, params: tuple = ()):
        self.path, self.where, self.field, self.params = str(path), where, field, params
        prefix = ": ".join([self.path] + ([where] if where else []) + ([f"field '{field}'"] if field else []))
        self.template = f"{prefix}: {message}"
        super().__init__(self.render(lambda name: name))
        self.reason = str(self).removeprefix(prefix + ": ")  # the message alone


class BundleError(CarError):
    """A model bundle is missing, incomplete, tampered with or of an unknown version."""


class UsageError(CarError, ValueError):
    """A parameter has a value outside what it accepts; the message names the parameter."""

    def __init__(self, message: str, *params: str):
        self.template, self.params = message, params
        super().__init__(self.render(lambda name: name))


def _restore(cls, args, state):
    err = Exception.__new__(cls)
    err.args = args
    err.__dict__.update(state)
    return err
