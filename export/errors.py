"""Errors of the export step, importable without torch (the CLI catches them before the extra is checked)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from car_onnx import CarError


class ExportError(CarError):
    """An export failed its own check."""


@dataclasses.dataclass(frozen=True)
class Refusal:
    """A reduced-precision variant that missed its gate: what failed and all its figures."""

    precision: str
    failed: list[str]
    metrics: dict

    def __str__(self) -> str:
        figures = ", ".join(f"{k} {v}" for k, v in self.metrics.items())
        return f"{'; '.join(self.failed)} ({figures})"


class VariantsRefused(ExportError):
    """Raised after the bundle was written with every variant that passed: names the refused ones."""

    def __init__(self, root: Path, name: str, kept: list[str], refused: list[Refusal]):
        self.root, self.name, self.kept, self.refused = Path(root), name, kept, refused
        super().__init__(
            f"{root}: model '{name}' written with {', '.join(kept)}; refused: "
            f"{'; '.join(str(r) for r in refused)}; pass --force to keep "
            f"{'them' if len(refused) > 1 else 'it'} anyway"
        )
