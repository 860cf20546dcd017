"""A sentence-transformers folder (Transformer, Pooling, optional Normalize) to a bundle embedder: one graph
from token ids to the sentence embedding, pooling and normalisation inside, checked against
`SentenceTransformer(folder).encode` on real texts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

import car_onnx
from car_onnx import CarError
from car_onnx.runtime.manifest import ModelSpec, Template, Variant, sha256_file

from .check_texts import RECORDS
from .onnx_tools import add_to_bundle, build_variants, copy_tokenizer, raise_refused

NAME = "embedder"
TEMPLATE = Template("Instruction: {instruction} Input: {input} Response: {output}", None)
POOL_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
LEGACY_POOL_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# Encoders whose position ids start after the pad id (RoBERTa's offset): they hold pad_id + 1 fewer positions.
PAD_OFFSET_TYPES = ("roberta", "xlm-roberta", "camembert", "xlm-roberta-xl", "mpnet")


def verification_texts() -> list[str]:
    """Real texts for an export's self-check: the committed check records (check_texts.py: short to past 512
    tokens) in the selection template, and two texts past any token limit. The same texts wherever the export
    runs, so a bundle's recorded fidelity and int8 decision depend on nothing outside the package."""
    texts = [TEMPLATE.render(*r) for r in RECORDS]
    long = " ".join(r[2] for r in RECORDS)
    while len(long.split()) < 1200:
        long = long + " " + long
    return texts + [TEMPLATE.render("Summarise the following.", long, "A summary."), long]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CarError(f"{path}: file missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CarError(f"{path}: not valid JSON ({err})") from None


def pooling_modes(config: dict, path: Path) -> tuple[str, ...]:
    """Pooling modes of a 1_Pooling/config.json, in sentence-transformers' order (concatenated when several)."""
    if "pooling_mode" in config:
        modes = config["pooling_mode"]
        modes = (modes,) if isinstance(modes, str) else tuple(modes)
    else:
        modes = tuple(mode for key, mode in LEGACY_POOL_KEYS.items() if config.get(key)) or ("mean",)
    bad = [m for m in modes if m not in POOL_MODES]
    if not modes or bad:
        raise CarError(f"{path}: pooling mode(s) {list(modes)} not supported; one or more of {list(POOL_MODES)}")
    return modes


class Pooling(nn.Module):
    """sentence-transformers' pooling over right-padded rows, then optional L2 normalisation."""

    def __init__(self, modes: tuple[str, ...], normalize: bool):
        super().__init__()
        self.modes, self.normalize = modes, normalize

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        m = attention_mask.unsqueeze(-1).to(tokens.dtype)
        out = []
        for mode in self.modes:
            if mode == "cls":
                out.append(tokens[:, 0])  # the first real token, as rows are right-padded
            elif mode == "max":
                out.append(tokens.masked_fill(m == 0, float("-inf")).max(dim=1).values)
            elif mode in ("mean", "mean_sqrt_len_tokens"):
                count = m.sum(dim=1).clamp(min=1e-9)
                total = (tokens * m).sum(dim=1)
                out.append(total / count if mode == "mean" else total / torch.sqrt(count))
            elif mode == "weightedmean":
                w = m * torch.arange(1, tokens.shape[1] + 1, dtype=tokens.dtype).view(1, -1, 1)
                out.append((tokens * w).sum(dim=1) / w.sum(dim=1).clamp(min=1e-9))
            else:  # lasttoken
                last = (attention_mask.sum(dim=1) - 1).clamp(min=0)
                out.append(tokens[torch.arange(tokens.shape[0]), last])
        emb = torch.cat(out, dim=-1)
        return nn.functional.normalize(emb, p=2, dim=1) if self.normalize else emb


class Embedder(nn.Module):
    """Encoder + pooling: token ids to one sentence embedding per row."""

    def __init__(self, encoder: nn.Module, pooling: Pooling, inputs: tuple[str, ...]):
        super().__init__()
        self.encoder, self.pooling, self.input_names = encoder, pooling, inputs

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        kwargs = {"token_type_ids": token_type_ids} if "token_type_ids" in self.input_names else {}
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        return self.pooling(out[0], attention_mask)


def read_folder(model_dir: Path) -> dict:
    """What the export needs from a sentence-transformers folder; refuses modules it cannot put in a graph."""
    model_dir = Path(model_dir)
    modules = _read_json(model_dir / "modules.json")
    if not isinstance(modules, list) or not modules:
        raise CarError(f"{model_dir / 'modules.json'}: expected a non-empty list of modules")
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    transformer_path = pooling_path = None
    normalize = False
    for kind, module in zip(kinds, modules):
        if kind == "Transformer" and transformer_path is None and pooling_path is None:
            transformer_path = model_dir / module.get("path", "")
        elif kind == "Pooling" and transformer_path is not None and pooling_path is None:
            pooling_path = model_dir / module.get("path", "1_Pooling")
        elif kind == "Normalize" and pooling_path is not None and not normalize:
            normalize = True
        else:
            raise CarError(
                f"{model_dir / 'modules.json'}: module sequence {kinds} is not supported; "
                "the export handles Transformer, Pooling and an optional Normalize, in that order"
            )
    if transformer_path is None or pooling_path is None:
        raise CarError(f"{model_dir / 'modules.json'}: needs a Transformer then a Pooling module, got {kinds}")
    tokenizer = transformer_path / "tokenizer.json"
    if not tokenizer.is_file():
        raise CarError(f"{tokenizer}: missing; the bundle needs the fast tokenizer's tokenizer.json")
    config = _read_json(transformer_path / "config.json")
    st_config_path = transformer_path / "sentence_bert_config.json"
    st_config = _read_json(st_config_path) if st_config_path.is_file() else {}
    pool_config_path = pooling_path / "config.json"
    modes = pooling_modes(_read_json(pool_config_path), pool_config_path)
    return {
        "transformer": transformer_path,
        "tokenizer": tokenizer,
        "config": config,
        "st_config": st_config,
        "modes": modes,
        "normalize": normalize,
    }


def max_length(config: dict, st_config: dict, tokenizer_config: dict) -> int:
    """sentence_bert_config's max_seq_length (else the tokenizer's limit), capped by the position table."""
    positions = int(config.get("max_position_embeddings") or 10**9)
    if config.get("model_type") in PAD_OFFSET_TYPES:
        positions -= int(config.get("pad_token_id") or 0) + 1
    limit = st_config.get("max_seq_length") or tokenizer_config.get("model_max_length") or positions
    return int(min(int(limit), positions))


def write_tokenizer(src: Path, root: Path, lowercase: bool) -> str:
    """Copy tokenizer.json; with sentence-transformers' do_lower_case, put a Lowercase normaliser in front
    (what sentence-transformers itself does), so the bundle's tokenizer sees the same text."""
    rel = copy_tokenizer(src, root, NAME)
    if lowercase:
        from tokenizers import Tokenizer, normalizers

        tok = Tokenizer.from_file(str(src))
        old = tok.normalizer
        if "Lowercase" not in json.dumps(json.loads(tok.to_str()).get("normalizer")):
            parts = [normalizers.Lowercase()]
            if isinstance(old, normalizers.Sequence):
                parts += list(old)
            elif old is not None:
                parts.append(old)
            tok.normalizer = normalizers.Sequence(parts)
            tok.save(str(Path(root) / rel))
    return rel


def weights_sha256(folder: Path) -> dict:
    names = ("model.safetensors", "pytorch_model.bin")
    return {n: sha256_file(folder / n) for n in names if (folder / n).is_file()}


def export_embedder(
    model_dir: Path,
    output: Path,
    *,
    precisions=("fp32", "int8"),
    force: bool = False,
    texts: list[str] | None = None,
    log=print,
) -> ModelSpec:
    """Export the sentence-transformers model in `model_dir` as the embedder of the bundle in `output`
    (merged with the models already there)."""
    from transformers import AutoConfig, AutoModel

    model_dir, output = Path(model_dir), Path(output)
    folder = read_folder(model_dir)
    config = folder["config"]
    tok_config_path = folder["transformer"] / "tokenizer_config.json"
    tok_config = _read_json(tok_config_path) if tok_config_path.is_file() else {}
    limit = max_length(config, folder["st_config"], tok_config)
    pad_id = config.get("pad_token_id")
    if pad_id is None:
        pad_id = (_read_json(folder["tokenizer"]).get("padding") or {}).get("pad_id", 0)
    inputs = ("input_ids", "attention_mask")
    if int(config.get("type_vocab_size") or 0) > 1:  # the encoder has segment embeddings: the graph takes them
        inputs += ("token_type_ids",)

    hf_config = AutoConfig.from_pretrained(str(folder["transformer"]), local_files_only=True)
    hf_config._attn_implementation = "eager"  # the attention pattern onnxruntime's fusions recognise
    encoder = AutoModel.from_pretrained(
        str(folder["transformer"]), config=hf_config, attn_implementation="eager", local_files_only=True
    ).eval()
    model = Embedder(encoder, Pooling(folder["modes"], folder["normalize"]), inputs).eval()
    output.mkdir(parents=True, exist_ok=True)
    tokenizer = write_tokenizer(folder["tokenizer"], output, bool(folder["st_config"].get("do_lower_case")))
    with torch.no_grad():
        dim = int(model(*(torch.ones((1, 4), dtype=torch.int64) for _ in inputs)).shape[-1])

    spec = ModelSpec(
        name=NAME,
        roles=("embed",),
        tokenizer=tokenizer,
        template=TEMPLATE,
        max_length=limit,
        pad_id=int(pad_id),
        inputs=inputs,
        outputs={"embed": "embedding"},
        variants={"fp32": Variant(f"{NAME}/model.fp32.onnx")},
        embedding_dim=dim,
        info={
            "source": model_dir.name,
            "base_model": config.get("_name_or_path", ""),
            "model_type": config.get("model_type", ""),
            "pooling": list(folder["modes"]),
            "normalize": folder["normalize"],
            "max_seq_length": limit,
            "weights_sha256": weights_sha256(folder["transformer"]),
        },
    )

    def reference(texts: list[str]) -> dict[str, np.ndarray]:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
        if st.max_seq_length != limit:
            raise CarError(
                f"{model_dir}: sentence-transformers truncates at {st.max_seq_length} tokens, the "
                f"export at {limit}; set max_seq_length in sentence_bert_config.json"
            )
        return {"embed": st.encode(texts, batch_size=16, convert_to_numpy=True)}

    example = {n: torch.ones((2, 8), dtype=torch.int64) for n in inputs}
    spec, refused = build_variants(
        model,
        spec,
        output,
        example,
        texts or verification_texts(),
        reference,
        precisions=precisions,
        num_heads=hf_config.num_attention_heads,
        hidden_size=hf_config.hidden_size,
        force=force,
        log=log,
    )
    add_to_bundle(output, spec, f"car-onnx export embedder {car_onnx.__version__}")
    log(f"embedder written to {output}")
    raise_refused(output, spec, refused)
    return spec
