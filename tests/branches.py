"""The tuned and relevance branches (export/tuned.py, export/relevance.py) written out independently for their
tests: a tiny BertLayer, and the branch's output on records as the default bundle reads them (copies of
all-MiniLM's last layers with the stored weights on the states below them, one text at a time, unpadded; the small
network in numpy)."""

import math

import numpy as np


def tiny_layer():
    import torch
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLayer

    torch.manual_seed(0)
    config = BertConfig(hidden_size=8, num_attention_heads=2, intermediate_size=16)
    config._attn_implementation = "eager"
    return BertLayer(config).eval()


def gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def network(net: dict, h: np.ndarray, response: np.ndarray) -> float:
    """The branch's network on one unpadded text's states after its layers."""
    r, p = h[response == 1].mean(0), h[response == 0].mean(0)
    cosine = r @ p / max(np.linalg.norm(r) * np.linalg.norm(p), 1e-8)
    x = np.concatenate([r, p, r * p, np.abs(r - p), [cosine]])
    x = gelu(x @ net["0.weight"].T + net["0.bias"])
    return float(x @ net["2.weight"][0] + net["2.bias"][0])


def branch_outputs(weights: dict, name: str, layers: int, records) -> list[float]:
    """The output of the branch stored under `name.` in `weights` (a safetensors file's arrays), `layers` BertLayers
    on all-MiniLM's states below its last `layers`, for each of `records` (instruction, input, output)."""
    import torch
    from transformers import AutoTokenizer, BertModel
    from transformers.models.bert.modeling_bert import BertLayer

    from car_onnx_export.default import minilm_dir

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)
    bert = BertModel.from_pretrained(str(minilm_dir()), local_files_only=True).eval()
    copies = [BertLayer(bert.config).eval() for _ in range(layers)]
    for i, layer in enumerate(copies):
        prefix = f"{name}.layers.{i}."
        layer.load_state_dict(
            {
                k[len(prefix) :]: torch.from_numpy(v.astype(np.float32))
                for k, v in weights.items()
                if k.startswith(prefix)
            }
        )
    prefix = f"{name}.net."
    net = {k[len(prefix) :]: v.astype(np.float64) for k, v in weights.items() if k.startswith(prefix)}
    out = []
    for r in records:
        head = (
            f"Instruction: {r.instruction} Input: {r.input} Response: "
            if r.input
            else f"Instruction: {r.instruction} Response: "
        )
        enc = tok(
            [head + r.output],
            truncation=True,
            max_length=256,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )
        response = ((enc["offset_mapping"][0, :, 0] >= len(head)) & (enc["special_tokens_mask"][0] == 0)).numpy()
        with torch.no_grad():
            h = bert(
                input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True
            ).hidden_states[-1 - layers]
            for layer in copies:
                h = layer(h)[0]
        out.append(network(net, h[0].numpy().astype(np.float64), response.astype(np.int8)))
    return out
