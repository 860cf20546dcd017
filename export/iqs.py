"""The paper's Instruction Quality Scorer checkpoint (a COMET-style Lightning run folder) to a bundle scorer,
read without the `comet` package: XLM-R encoder + layer-wise mix + pooling + feed-forward, one graph from token
ids to one score, checked against the same model in PyTorch on real texts."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn

import car_onnx
from car_onnx import CarError
from car_onnx.runtime.manifest import ModelSpec, Template, Variant, sha256_file
from car_onnx.runtime.tokenization import load_tokenizer, pad_batch, tokenize

from .embedder import verification_texts
from .heads import ACTIVATIONS, HeadConfig, ScoringHead
from .onnx_tools import add_to_bundle, build_variants, copy_tokenizer, raise_refused

NAME = "iqs"
TEMPLATE = Template("Instruction: {instruction} Input: {input} Response: {output}", None)
ENCODER = "encoder.model."
IGNORED = (
    "layerwise_attention.dropout_mask",
    "layerwise_attention.dropout_fill",  # training-time buffers
    ENCODER + "embeddings.position_ids",
)  # old transformers saved it; recomputed from the ids
REQUIRED_HPARAMS = ("layer", "layer_transformation", "layer_norm", "pool", "hidden_sizes", "activations")
REFERENCE_BATCH = 8


def find_hparams(checkpoint: Path) -> Path:
    """RUN/hparams.yaml for RUN/checkpoints/X.ckpt (the released layout); a file beside the checkpoint also counts."""
    for path in (checkpoint.parent.parent / "hparams.yaml", checkpoint.parent / "hparams.yaml"):
        if path.is_file():
            return path
    raise CarError(
        f"{checkpoint}: no hparams.yaml at {checkpoint.parent.parent / 'hparams.yaml'} (the run "
        "folder of RUN/checkpoints/X.ckpt); it says how the head is built"
    )


def read_hparams(path: Path) -> dict:
    import yaml

    try:
        hparams = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise CarError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(hparams, dict):
        raise CarError(f"{path}: expected a mapping of hyper-parameters")
    missing = [k for k in REQUIRED_HPARAMS if k not in hparams]
    if missing:
        raise CarError(f"{path}: key '{missing[0]}' missing (needed: {', '.join(REQUIRED_HPARAMS)})")
    return hparams


def head_config(hparams: dict, path: Path, hidden: int, num_layers: int) -> HeadConfig:
    """The head as hparams.yaml describes it; a value outside what COMET accepts names the key."""

    def bad(key, allowed):
        return CarError(f"{path}: key '{key}' = {hparams.get(key)!r}, expected {allowed}")

    sizes = hparams["hidden_sizes"]
    try:
        if isinstance(sizes, str):
            sizes = [int(s) for s in sizes.split(",") if s.strip()]
        sizes = tuple(int(s) for s in ([sizes] if isinstance(sizes, int) else sizes))
    except (TypeError, ValueError):
        raise bad("hidden_sizes", "a list of integers or a comma-separated string") from None
    if not sizes or min(sizes) < 1:
        raise bad("hidden_sizes", "a non-empty list of positive integers")
    names = {k.lower(): k for k in ACTIVATIONS}

    def activation(key):
        value = hparams.get(key)
        if value is None and key == "final_activation":
            return None
        if not isinstance(value, str) or value.lower() not in names:
            raise bad(key, f"one of {sorted(ACTIVATIONS)}" + (" or null" if key == "final_activation" else ""))
        return names[value.lower()]

    layer = hparams["layer"]
    if isinstance(layer, str) and layer != "mix":
        layer = int(layer) if layer.strip().isdigit() else layer
    layer_norm = hparams["layer_norm"]
    if not isinstance(layer_norm, bool):
        raise bad("layer_norm", "true or false")
    try:
        return HeadConfig(
            hidden=hidden,
            num_layers=num_layers,
            layer=layer,
            mix=hparams["layer_transformation"],
            layer_norm=layer_norm,
            pool=hparams["pool"],
            hidden_sizes=sizes,
            activation=activation("activations"),
            final_activation=activation("final_activation"),
            dropout=float(hparams.get("dropout") or 0.0),
        )
    except ValueError as err:  # its message starts with the key's name
        raise CarError(f"{path}: {err}") from None


def load_state_dict(checkpoint: Path, unsafe_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict; by default torch's weights-only loader (no code runs from the file),
    memory-mapped where the file format allows."""
    import zipfile

    if not checkpoint.is_file():
        raise CarError(f"{checkpoint}: checkpoint file not found")
    with open(checkpoint, "rb") as f:
        legacy = f.read(1) == b"\x80"  # torch's pre-1.6 format: a bare pickle
    if not legacy and not zipfile.is_zipfile(checkpoint):
        raise CarError(f"{checkpoint}: not a readable PyTorch checkpoint (neither a torch zip archive nor a pickle)")

    def load(mmap: bool):
        return torch.load(str(checkpoint), map_location="cpu", weights_only=not unsafe_pickle, mmap=mmap)

    try:
        try:
            obj = load(mmap=True)
        except RuntimeError as err:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(err):
                raise
            obj = load(mmap=False)
    except pickle.UnpicklingError as err:
        if unsafe_pickle:
            raise CarError(f"{checkpoint}: cannot unpickle ({str(err).splitlines()[0]})") from None
        reason = next(
            (line for line in str(err).splitlines() if "Unsupported" in line or "GLOBAL" in line),
            str(err).splitlines()[0],
        )
        raise CarError(
            f"{checkpoint}: torch's weights-only loader refuses this file ({reason.strip()}); if you "
            "trust the file, pass --unsafe-pickle (unpickling can run code stored in it)"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise CarError(f"{checkpoint}: not a readable PyTorch checkpoint ({err})") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CarError(f"{checkpoint}: no state_dict of tensors in it (expected a Lightning checkpoint)")
    return state


def split_state(state: dict, checkpoint: Path, mix: bool) -> tuple[dict, dict]:
    """(encoder state dict, head state dict); any key outside the released layout is an error."""
    encoder, head = {}, {}
    for key, value in state.items():
        if key in IGNORED or key.startswith(ENCODER + "pooler."):  # COMET builds XLM-R without its pooler
            continue
        if key.startswith(ENCODER):
            encoder[key[len(ENCODER) :]] = value
        elif key.startswith("estimator.ff.") or key.startswith("layerwise_attention."):
            if key.startswith("layerwise_attention.") and not mix:
                continue  # an integer `layer` does not use the mix
            head[key] = value
        else:
            raise CarError(
                f"{checkpoint}: unexpected key '{key}' in the state dict (not an IQS/COMET regression checkpoint?)"
            )
    if not encoder:
        raise CarError(f"{checkpoint}: no '{ENCODER}*' keys in the state dict")
    return encoder, head


def encoder_config(encoder: dict, base: Path | None, checkpoint: Path):
    """XLM-R config from --base DIR/config.json, else inferred from the weights' shapes (64-dim heads)."""
    import json

    from transformers import XLMRobertaConfig

    if base is not None and (base / "config.json").is_file():
        try:
            d = json.loads((base / "config.json").read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CarError(f"{base / 'config.json'}: not valid JSON ({err})") from None
        config = XLMRobertaConfig(**{k: v for k, v in d.items() if k not in ("model_type", "architectures")})
    else:

        def shape(key):
            if key not in encoder:
                raise CarError(f"{checkpoint}: key '{ENCODER}{key}' missing from the state dict")
            return tuple(encoder[key].shape)

        vocab, hidden = shape("embeddings.word_embeddings.weight")
        layers = len({k.split(".")[2] for k in encoder if k.startswith("encoder.layer.")})
        if hidden % 64:
            raise CarError(
                f"{checkpoint}: hidden size {hidden} is not a multiple of 64, so the number of attention "
                "heads cannot be inferred; pass --base DIR holding the encoder's config.json"
            )
        config = XLMRobertaConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=hidden // 64,
            intermediate_size=shape("encoder.layer.0.intermediate.dense.weight")[0],
            max_position_embeddings=shape("embeddings.position_embeddings.weight")[0],
            type_vocab_size=shape("embeddings.token_type_embeddings.weight")[0],
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            layer_norm_eps=1e-5,
        )
    config._attn_implementation = "eager"  # the attention pattern onnxruntime's fusions recognise
    return config


def check_keys(expected: dict, state: dict, checkpoint: Path, prefix: str) -> None:
    """Every expected tensor present with its shape, nothing more: the first difference names the key."""
    expected = {k: tuple(v.shape) for k, v in expected.items()}
    for key, shape in expected.items():
        if key not in state:
            raise CarError(f"{checkpoint}: key '{prefix}{key}' missing from the state dict")
        if tuple(state[key].shape) != shape:
            raise CarError(
                f"{checkpoint}: key '{prefix}{key}' has shape {list(state[key].shape)}, the model "
                f"built from the config expects {list(shape)}"
            )
    extra = sorted(set(state) - set(expected))
    if extra:
        raise CarError(f"{checkpoint}: unexpected key '{prefix}{extra[0]}' in the state dict")


class Scorer(nn.Module):
    """XLM-R with all hidden states, then the COMET head: token ids to one score per row."""

    def __init__(self, encoder: nn.Module, head: ScoringHead):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, input_ids, attention_mask):
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return self.head(out.hidden_states, input_ids, attention_mask)


def load_scorer(checkpoint: Path, base: Path | None = None, unsafe_pickle: bool = False):
    """(Scorer in eval mode with frozen mix weights, hparams, XLM-R config) from a run folder's checkpoint."""
    from transformers import XLMRobertaModel
    from transformers.modeling_utils import no_init_weights

    checkpoint = Path(checkpoint)
    hparams_path = find_hparams(checkpoint)
    hparams = read_hparams(hparams_path)
    mix = hparams["layer"] == "mix"
    state = load_state_dict(checkpoint, unsafe_pickle)
    enc_state, head_state = split_state(state, checkpoint, mix)
    del state
    config = encoder_config(enc_state, base, checkpoint)
    cfg = head_config(hparams, hparams_path, config.hidden_size, config.num_hidden_layers + 1)
    if mix:
        n_scalars = len([k for k in head_state if k.startswith("layerwise_attention.scalar_parameters.")])
        if n_scalars != cfg.num_layers:
            raise CarError(
                f"{checkpoint}: {n_scalars} layerwise_attention.scalar_parameters for an encoder with "
                f"{cfg.num_layers} hidden states (embeddings + {config.num_hidden_layers} layers)"
            )
    with no_init_weights():  # the weights come from the checkpoint: skip the random initialisation
        encoder = XLMRobertaModel(config, add_pooling_layer=False)
    head = ScoringHead(cfg, pad_id=config.pad_token_id)
    head_expected = (
        head.state_dict()
        if mix
        else {k: v for k, v in head.state_dict().items() if not k.startswith("layerwise_attention.")}
    )
    check_keys(encoder.state_dict(), enc_state, checkpoint, ENCODER)
    check_keys(head_expected, head_state, checkpoint, "")
    # assign=True keeps the (memory-mapped) checkpoint tensors instead of copying them into fresh ones.
    encoder.load_state_dict({k: v.float() for k, v in enc_state.items()}, assign=True)
    head.load_state_dict({**head.state_dict(), **{k: v.float() for k, v in head_state.items()}})
    head.layerwise_attention.freeze()
    return Scorer(encoder, head).eval(), hparams, config


def tokenizer_path(base: Path | None) -> Path:
    """--base DIR/tokenizer.json: the bundle carries the encoder's own tokenizer, so there is no export without it."""
    hint = (
        "--base DIR must hold the encoder's tokenizer.json (e.g. a local copy of the xlm-roberta-large "
        "folder named by pretrained_model in hparams.yaml): the bundle carries its own tokenizer"
    )
    if base is None:
        raise CarError(f"no tokenizer: {hint}")
    path = Path(base) / "tokenizer.json"
    if not path.is_file():
        raise CarError(f"{path}: missing; {hint}")
    return path


def check_tokenizer(path: Path, config) -> None:
    """The tokenizer fits the encoder: ids within its vocabulary, texts wrapped in <s> ... </s>, same pad id."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises a bare Exception on a malformed file
        raise CarError(f"{path}: cannot load tokenizer ({err})") from None
    if tok.get_vocab_size() > config.vocab_size:
        raise CarError(
            f"{path}: {tok.get_vocab_size()} tokens, more than the encoder's vocabulary of "
            f"{config.vocab_size}: not this encoder's tokenizer"
        )
    tok.no_padding()
    tok.no_truncation()
    ids = tok.encode("Hello world").ids
    if not ids or ids[0] != config.bos_token_id or ids[-1] != config.eos_token_id:
        raise CarError(
            f"{path}: does not wrap texts in <s> ... </s> (ids {config.bos_token_id} ... "
            f"{config.eos_token_id}) as XLM-R's tokenizer does; got {ids[:3]}...{ids[-1:]}"
        )
    pad = tok.token_to_id("<pad>")
    if pad is not None and pad != config.pad_token_id:
        raise CarError(f"{path}: <pad> is id {pad}, the encoder's pad id is {config.pad_token_id}")


def export_scorer(
    checkpoint: Path,
    output: Path,
    *,
    base: Path | None = None,
    precisions=("fp32", "int8"),
    force: bool = False,
    unsafe_pickle: bool = False,
    texts: list[str] | None = None,
    log=print,
) -> ModelSpec:
    """Export an IQS checkpoint (RUN/checkpoints/X.ckpt with RUN/hparams.yaml) as the scorer of the bundle in
    `output` (merged with the models already there). `base` holds the encoder's tokenizer.json and, optionally,
    its config.json."""
    checkpoint, output = Path(checkpoint), Path(output)
    base = Path(base) if base is not None else None
    tokenizer_src = tokenizer_path(base)
    model, hparams, config = load_scorer(checkpoint, base, unsafe_pickle)
    check_tokenizer(tokenizer_src, config)
    digest = sha256_file(checkpoint)
    log(f"{NAME}: checkpoint read, sha256 {digest[:12]}...")
    max_length = config.max_position_embeddings - 4
    output.mkdir(parents=True, exist_ok=True)
    tokenizer = copy_tokenizer(tokenizer_src, output, NAME)
    used = {k: hparams.get(k) for k in ("pretrained_model", *REQUIRED_HPARAMS, "final_activation", "dropout")}
    weights = model.head.layerwise_attention.frozen
    held = {"model": model}  # dropped by build_variants once exported: a 550M model's memory goes to the ONNX steps
    del model
    spec = ModelSpec(
        name=NAME,
        roles=("score",),
        tokenizer=tokenizer,
        template=TEMPLATE,
        max_length=max_length,
        pad_id=int(config.pad_token_id),
        inputs=("input_ids", "attention_mask"),
        outputs={"score": "score"},
        variants={"fp32": Variant(f"{NAME}/model.fp32.onnx")},
        info={
            "source": "IQS checkpoint (COMET-style regression metric)",
            "run": checkpoint.parent.parent.name,
            "checkpoint": checkpoint.name,
            "checkpoint_sha256": digest,
            "hparams": used,
            "encoder": {
                k: getattr(config, k)
                for k in (
                    "vocab_size",
                    "hidden_size",
                    "num_hidden_layers",
                    "num_attention_heads",
                    "intermediate_size",
                    "max_position_embeddings",
                )
            }
            | {"config_from": "base" if base and (base / "config.json").is_file() else "inferred from the weights"},
            "layer_weights": [round(float(w), 6) for w in weights] if hparams["layer"] == "mix" else None,
        },
    )

    def reference(texts: list[str]) -> dict[str, np.ndarray]:
        """The PyTorch model on right-padded batches in the texts' order (mixed lengths in each batch)."""
        tok = load_tokenizer(output / tokenizer, max_length)
        ids = tokenize(tok, texts).ids
        scores = []
        with torch.inference_mode():
            for i in range(0, len(ids), REFERENCE_BATCH):
                batch, mask = pad_batch(ids[i : i + REFERENCE_BATCH], spec.pad_id)
                scores.append(held["model"](torch.from_numpy(batch), torch.from_numpy(mask)).numpy())
        return {"score": np.concatenate(scores).astype(np.float32)}

    example = {n: torch.full((2, 8), 5, dtype=torch.int64) for n in spec.inputs}
    spec, refused = build_variants(
        held["model"],
        spec,
        output,
        example,
        texts or verification_texts(),
        reference,
        precisions=precisions,
        num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size,
        force=force,
        release=held.clear,
        log=log,
    )
    add_to_bundle(output, spec, f"car-onnx export scorer {car_onnx.__version__}")
    log(f"IQS scorer written to {output}")
    raise_refused(output, spec, refused)
    return spec
