"""Seconds and peak memory per CT with SAT-Nano (or SAT-Pro) through `promptseg predict`.

The published files are never downloaded here: the model file has the authors' key layout at the
real size with seeded random values (`models.official_sat.random_sat_state_dict`), so the network
costs what the real weights cost; the text tower is a 1-layer random BERT (768-d, as BioLORD's
output), built here, so the import's embedding time is NOT BioLORD's (the predict needs no tower).
Each step runs as a user would run it, in a fresh process:

    promptseg import-checkpoint SAT_Nano.pth --text-model BERT --text-weights TEXT.pth -o sat_nano --modalities ct
    promptseg predict -m sat_nano -i ../shared/data/ct_abdomen_pelvis/image.nii.gz -o OUT \
        --prompt "left kidney" "liver tumor" --modality CT

with the authors' settings the import records (RAS, 1 x 1 x 3 mm, 288x288x96 windows, half-window
stride, Gaussian blending of sigmoids). Printed per variant: wall seconds of the predict process
(model load included), its peak RSS and the per-stage seconds (predict's own summary line).

Run:  .venv/bin/python benchmarks/sat_predict.py [--variants nano pro] [--device cpu|cuda] [--sw-batch-size 1]
"""
from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from official_predict import IMAGE, promptseg, run_timed  # noqa: E402  -- the same timed child runner

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "left", "right", "kidney", "liver", "tumor", "lung"]


def text_tower(work: Path) -> tuple[Path, Path]:
    """A 1-layer random BERT folder (768-d) and a text-encoder file in the authors' layout."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = work / "bert"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(str(folder))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(WORDS), hidden_size=768, num_hidden_layers=1, num_attention_heads=12,
                     intermediate_size=256, max_position_embeddings=64)
    tower = BertModel(cfg)
    tower.save_pretrained(str(folder))
    gen = torch.Generator().manual_seed(1)
    sd = {f"module.text_tower.biolord.{k}": v for k, v in tower.state_dict().items()}
    for k, shape in {"projection_layer.0.weight": (768, 768), "projection_layer.0.bias": (768,),
                     "projection_layer.2.weight": (768, 768), "projection_layer.2.bias": (768,),
                     "modality_embed.weight": (4, 768)}.items():
        sd["module." + k] = torch.randn(shape, generator=gen) * 0.05
    weights = work / "text_encoder.pth"
    torch.save({"model_state_dict": sd}, weights)
    return folder, weights


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=["nano"], choices=["nano", "pro"])
    ap.add_argument("--image", default=str(IMAGE))
    ap.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--sw-batch-size", type=int, default=None,
                    help="windows per forward (default: the authors' 2; 1 halves the CPU memory)")
    ap.add_argument("--prompts", nargs="+", default=["left kidney", "liver tumor"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args(argv)

    import torch

    from promptseg.models.official_sat import random_sat_state_dict

    work = Path(args.work or tempfile.mkdtemp(prefix="sat_predict_"))
    work.mkdir(parents=True, exist_ok=True)
    bert, text_weights = text_tower(work)
    for variant in args.variants:
        model_dir = work / f"sat_{variant}"
        if not (model_dir / "sat.json").exists():  # a --work folder of an earlier run keeps its import
            src = work / f"SAT_{variant}.pth"
            torch.save({"model_state_dict": random_sat_state_dict(variant, seed=0)}, src)
            wall, rss, _ = run_timed(promptseg("import-checkpoint", str(src), "--text-model", str(bert),
                                               "--text-weights", str(text_weights), "-o", str(model_dir),
                                               "--modalities", "ct"))
            src.unlink()
            print(f"SAT-{variant} import: {wall:.1f} s, peak RSS {rss / 1024:.1f} GB (1-layer random text tower)")
        cmd = promptseg("predict", "-m", str(model_dir), "-i", args.image, "-o", str(work / f"{variant}_out"),
                        "--prompt", *args.prompts, "--modality", "CT", "--device", args.device, "--quiet")
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.sw_batch_size:
            cmd += ["--sw-batch-size", str(args.sw_batch_size)]
        wall, rss, out = run_timed(cmd)
        summary = next((ln for ln in out.splitlines() if "classes found" in ln), "")
        stages = re.search(r"\[(.*)\]", summary)
        print(f"SAT-{variant} predict ({len(args.prompts)} prompts, device {args.device}, "
              f"sw_batch_size {args.sw_batch_size or 'default'}): {wall:.1f} s wall, peak RSS {rss / 1024:.1f} GB; "
              f"stages: {stages.group(1) if stages else summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
