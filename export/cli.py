"""Export commands of `car-onnx`. Only typer is imported here; torch and friends load inside each command."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from car_onnx import UsageError
from car_onnx.runtime.manifest import PRECISIONS

app = typer.Typer(
    name="export",
    rich_markup_mode=None,
    help="Build ONNX bundles (needs the export extra of car-onnx).",
    no_args_is_help=True,
)

Precisions = Annotated[str, typer.Option("--precision", help="Comma-separated variants to build: fp32,int8,fp16.")]
Force = Annotated[bool, typer.Option("--force", help="Keep a reduced-precision variant that fails its gate.")]
NewBundle = Annotated[Optional[Path], typer.Option("--output", "-o", help="Bundle directory [default: as said above].")]
IntoBundle = Annotated[Path, typer.Option("--output", "-o", help="Bundle directory (models already there are kept).")]
# Exit status when the bundle was written with the variants that passed but an asked one missed its gate.
REFUSED_EXIT = 3
EPILOG = (
    f"Exit status {REFUSED_EXIT}: a variant missed its fidelity gate; the bundle was written with the variants "
    "that passed and the refused one is reported on stderr with its figures."
)


def _require() -> None:
    """Fail with the install command when the [export] extra is missing; silence the libraries' known-harmless
    warnings (the export checks every graph itself and prints its own progress)."""
    try:
        import onnx  # noqa: F401
        import torch
        import transformers
    except ImportError as err:
        raise UsageError(
            f"the export tools need the [export] extra ({err.name} is missing): "
            "pip install torch==2.13.0 && pip install 'car-onnx[export]'"
        ) from None
    import logging
    import warnings

    transformers.logging.set_verbosity_error()  # "weights not used": the pooler, which no model here uses
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # constants in traces: graphs are checked
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime's "consider pre-processing before quantization"


def _export(fn, *args, **kwargs) -> None:
    """Run an export; refused variants exit REFUSED_EXIT after the rest of the bundle was written (the car-onnx CLI
    turns any other error into one line)."""
    from .errors import VariantsRefused

    try:
        fn(*args, **kwargs)
    except VariantsRefused as err:
        typer.echo(f"car-onnx: error: {err}", err=True)
        raise typer.Exit(REFUSED_EXIT) from None


def _precisions(text: str) -> tuple[str, ...]:
    chosen = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in chosen if p not in PRECISIONS]
    if bad or not chosen:
        raise UsageError(f"{{precision}} takes fp32, int8 and/or fp16, got {text!r}", "precision")
    return chosen


@app.command(epilog=EPILOG)
def default(
    output: NewBundle = None,
    precision: Precisions = "fp32,int8,fp16",
    weights: Annotated[
        Optional[Path], typer.Option(help="A head from `car-onnx train-scorer` [default: the shipped one].")
    ] = None,
    force: Force = False,
    tuned: Annotated[
        bool,
        typer.Option(
            "--tuned",
            help="Build the shipped head with a tuned branch beside it (sees more cut-off and partly refused answers, costs about one layer more per text: docs/scorers.md), by default into the tuned folder beside the default bundle's; with --relevance, both branches in one graph (the tuned-relevance folder).",
        ),
    ] = False,
    relevance: Annotated[
        bool,
        typer.Option(
            "--relevance",
            help="Build the shipped head with a relevance branch beside it (sees answers to another, near question; costs about six layers more per text: docs/scorers.md), by default into the relevance folder beside the default bundle's.",
        ),
    ] = False,
):
    """Build the default bundle: all-MiniLM-L6-v2 and the project's trained scorer head in one graph, by default
    where `select` looks for it."""
    _require()
    from car_onnx import default_bundle_dir
    from car_onnx.runtime.bundle import data_dir

    from .default import RELEVANCE_WEIGHTS, TUNED_WEIGHTS, WEIGHTS, both_branches, export_default

    chosen = [name for name, on in (("tuned", tuned), ("relevance", relevance)) if on]
    if chosen and weights is not None:
        raise UsageError(
            f"{{{chosen[0]}}} builds the shipped {chosen[0]} head: pass {{weights}} alone for another",
            chosen[0],
            "weights",
        )
    option = "-".join(chosen) or None
    with tempfile.TemporaryDirectory() as tmp:
        if option == "tuned-relevance":  # the two shipped heads share their base: their branches go in one head
            weights = both_branches(TUNED_WEIGHTS, RELEVANCE_WEIGHTS, Path(tmp) / "both.safetensors")
        _export(
            export_default,
            output or (data_dir() / option if option else default_bundle_dir()),
            precisions=_precisions(precision),
            force=force,
            weights=weights or {"tuned": TUNED_WEIGHTS, "relevance": RELEVANCE_WEIGHTS, None: WEIGHTS}[option],
        )


@app.command(epilog=EPILOG)
def multilingual(
    output: NewBundle = None,
    precision: Precisions = "fp32,int8",
    weights: Annotated[
        Optional[Path],
        typer.Option(help="A head from `car-onnx train-scorer --encoder multilingual` [default: the shipped one]."),
    ] = None,
    force: Force = False,
):
    """Build the multilingual bundle: USE multilingual v3 (16 languages incl. Chinese) and a trained scorer head, by
    default in the multilingual folder beside the default bundle's."""
    _require()
    from .multilingual import WEIGHTS, default_output, export_multilingual

    _export(
        export_multilingual,
        output or default_output(),
        precisions=_precisions(precision),
        force=force,
        weights=weights or WEIGHTS,
    )


@app.command(epilog=EPILOG)
def scorer(
    checkpoint: Annotated[
        Path, typer.Option(help="The IQS checkpoint: RUN/checkpoints/X.ckpt, with RUN/hparams.yaml.")
    ],
    output: IntoBundle,
    base: Annotated[
        Optional[Path],
        typer.Option(
            help="Folder with the encoder's tokenizer.json and, optionally, config.json [config: inferred from the weights]."
        ),
    ] = None,
    precision: Precisions = "fp32,int8",
    force: Force = False,
    unsafe_pickle: Annotated[
        bool,
        typer.Option(
            "--unsafe-pickle",
            help="Load a checkpoint torch's weights-only loader refuses (runs code stored in the file: trusted files only).",
        ),
    ] = False,
):
    """Export the paper's IQS checkpoint (COMET layout) as the bundle's scorer."""
    _require()
    from .iqs import export_scorer

    _export(
        export_scorer,
        checkpoint,
        output,
        base=base,
        precisions=_precisions(precision),
        force=force,
        unsafe_pickle=unsafe_pickle,
    )


@app.command(epilog=EPILOG)
def embedder(
    model: Annotated[Path, typer.Option(help="A sentence-transformers model folder (modules.json, pooling config).")],
    output: IntoBundle,
    precision: Precisions = "fp32,int8",
    force: Force = False,
):
    """Export a sentence-transformers model as the bundle's embedder (pooling and normalisation in the graph)."""
    _require()
    from .embedder import export_embedder

    _export(export_embedder, model, output, precisions=_precisions(precision), force=force)


def train_scorer(
    train: Annotated[Path, typer.Option(help="Training CSV: src,score (pairs in consecutive rows) or src,pos,neg.")],
    valid: Annotated[
        Path,
        typer.Option(
            help="Validation CSV, same formats: measured and reported, never chosen on (epochs are chosen on 15% of --train held apart)."
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the head's weights (.safetensors).")],
    seed: Annotated[
        int, typer.Option(help="Seed of initialisation, shuffling, the held-apart split and the corruptions.")
    ] = 0,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs [default: the recipe's].")] = None,
    limit: Annotated[
        Optional[int], typer.Option(help="Use only the first N training pairs (for quick checks).")
    ] = None,
    encoder: Annotated[
        str, typer.Option(help="The frozen encoder: minilm (export default) or multilingual (export multilingual).")
    ] = "minilm",
    defects: Annotated[
        bool,
        typer.Option(
            "--defects/--no-defects",
            help="Also train the score to put corrupted copies of the training records (answers to other questions, echoes, cut-offs, loops, other languages, empty and boilerplate answers) below the real ones.",
        ),
    ] = True,
    foreign: Annotated[
        Optional[Path],
        typer.Option(
            help="A dataset (JSON, JSONL, CSV) whose answers are in another language than the training pairs': lends wrong-language answers."
        ),
    ] = None,
    foreign_first: Annotated[
        Optional[int],
        typer.Option(help="Lend only the first N answers of --foreign (keep the rest apart for measuring)."),
    ] = None,
    window_term: Annotated[
        bool,
        typer.Option(
            "--window-term",
            help="Also train a second defect term for the windows of answers longer than the model's window (--encoder minilm): a refused tail of a long answer is seen, a few more long answers to other questions pass; the default bundle's head is trained with it (docs/whole-records.md).",
        ),
    ] = False,
    refusal_term: Annotated[
        bool,
        typer.Option(
            "--refusal-term",
            help="Also train a third defect term, added to the others, that reads only whether a part of the answer reads like a refusal (the refusal reader's numbers): answers whose last parts were refused, and long answers with a refused tail, below the complete ones; both shipped heads have it (docs/scorers.md).",
        ),
    ] = False,
    end_term: Annotated[
        bool,
        typer.Option(
            "--end-term",
            help="Train an end reader and a defect term, added to the others, that reads only how the answer ends (whether it ends as an answer cut mid-sentence does), beside the --base head, kept as it is; both shipped heads have it (docs/scorers.md).",
        ),
    ] = False,
    end_odds: Annotated[
        bool,
        typer.Option(
            "--end-odds",
            help="With --end-term: the end reader also reads how much likelier the answer's last token is to end a real answer than to stand anywhere in one (a table of the vocabulary, counted in the training answers); the multilingual bundle's head has it (docs/scorers.md).",
        ),
    ] = False,
    end_plain: Annotated[
        bool,
        typer.Option(
            "--end-plain",
            help="With --end-term: the end reader and its term also learn the training answers without the full stop, ! or ? that ends them as real answers, above the copies cut from them, so that an answer ending without punctuation (a name, a number, a list's last item) is not read as cut; cuts of answers that end with a full stop read less well with it: for data whose answers mostly end without one; neither shipped head has it (docs/scorers.md).",
        ),
    ] = False,
    recall_term: Annotated[
        bool,
        typer.Option(
            "--recall-term",
            help="Train a defect term, added to the others, that reads how the answer relates to the prompt (the cosines of their vectors and how much of the prompt the answer takes up) on answers to another question, beside the --base head (--encoder minilm), kept as it is; the default bundle's head has it (docs/scorers.md).",
        ),
    ] = False,
    base: Annotated[
        Optional[Path],
        typer.Option(
            help="A head trained before (.safetensors, on --encoder) whose quality head, defect terms and refusal reader are kept as they are: only its refusal term is trained (again), with --refusal-term, its end reader and term, with --end-term, its recall term, with --recall-term, or a branch beside it, with --tuned-layers or --relevance-layers.",
        ),
    ] = None,
    tuned_layers: Annotated[
        Optional[int],
        typer.Option(
            help="Train a tuned branch beside the --base head (--encoder minilm), kept as it is: copies of all-MiniLM's last N layers (1 or 2) and a small network, whose term is added to the score; it sees more cut-off and partly refused answers and costs N layers more per text (docs/scorers.md; export it with `export default --weights`).",
        ),
    ] = None,
    relevance_layers: Annotated[
        Optional[int],
        typer.Option(
            help="Train a relevance branch beside the --base head (--encoder minilm), kept as it is: copies of all-MiniLM's last N layers (1 to 6) and a small network trained to tell whether the response answers the prompt, whose penalty is taken off the score of an answer it takes for another question's; it costs N layers more per text (docs/scorers.md; export it with `export default --weights`).",
        ),
    ] = None,
):
    """Train a scorer head on expert-revised pairs, on top of a frozen encoder; by default it also learns to rank
    defective answers at the bottom."""
    _require()
    from car_onnx.io.readers import iter_records

    from .train import ENCODERS, train_head

    if encoder not in ENCODERS:
        raise UsageError(f"{{encoder}} must be one of {', '.join(ENCODERS)}, got {encoder!r}", "encoder")
    lent = [r.output for r in iter_records(foreign)][:foreign_first] if foreign is not None else None
    train_head(
        train,
        valid,
        output,
        seed=seed,
        epochs=epochs,
        limit=limit,
        encoder=encoder,
        defects=defects,
        foreign=lent,
        window_term=window_term,
        refusal_term=refusal_term,
        end_term=end_term,
        end_odds=end_odds,
        end_plain=end_plain,
        recall_term=recall_term,
        base=base,
        tuned_layers=tuned_layers,
        relevance_layers=relevance_layers,
    )


def register(cli: typer.Typer) -> None:
    """Add the export commands to the `car-onnx` CLI (entry point group car_onnx.cli)."""
    cli.add_typer(app)
    cli.command("train-scorer")(train_scorer)
