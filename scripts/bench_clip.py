#!/usr/bin/env python3
"""PyTorch + transformers side of scripts/bench-clip, and the shared weights.

    bench_clip.py make-weights DIR      # ViT-B/32-sized CLIPModel, random weights, HF layout
    bench_clip.py run DIR THREADS PHOTO...   # prints one JSON line of rates

Sizes are openai/clip-vit-base-patch32's (transformers' CLIPConfig defaults: vision
768 wide, 12 layers, patch 32 on 224 pixels; text 512 wide, 12 layers, 77 positions,
vocabulary 49,408; projection 512); speed does not depend on the values. The
tokenizer is the real CLIP BPE (from the fetched bpe_simple_vocab_16e6.txt.gz).
"""

import gzip
import json
import os
import sys
import time

import numpy as np
import torch

CAPTIONS = [
    "a photo of a cat sitting on a sofa",
    "an astronaut in a white space suit",
    "a cup of coffee with latte art on a wooden table",
    "a horse standing in a green field under a blue sky",
    "a black and white portrait of a man with a camera",
    "a rocket launching into the night sky with a bright trail of fire",
    "a motorcycle parked on the street",
    "deep field image of thousands of distant galaxies",
]


def make_weights(folder):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "models", "tests", "fixtures"))
    from gen_clip import read_merges, write_vocab_merges  # the generator's CLIP BPE helpers

    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig()).eval()
    model.save_pretrained(folder, safe_serialization=True)
    write_vocab_merges(folder, read_merges())
    CLIPTokenizer.from_pretrained(folder).save_pretrained(folder)


def rate(fn, n_items, min_seconds=3.0, min_reps=2):
    fn()  # warm-up
    reps, t0 = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        el = time.perf_counter() - t0
        if reps >= min_reps and el >= min_seconds:
            return n_items * reps / el


def run(folder, threads, photos):
    from PIL import Image
    from transformers import CLIPModel, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.set_num_threads(threads)
    model = CLIPModel.from_pretrained(folder, dtype=torch.float32).eval()
    tok = CLIPTokenizer.from_pretrained(folder)
    proc = CLIPImageProcessorPil()
    files = [photos[i % len(photos)] for i in range(32)]
    texts = [CAPTIONS[i % len(CAPTIONS)] for i in range(32)]
    out = {"threads": threads, "torch": torch.__version__}

    def preprocess(paths):
        images = [Image.open(p) for p in paths]
        return torch.from_numpy(proc(images=images, return_tensors="np")["pixel_values"])

    with torch.inference_mode():
        pre1, pre32 = preprocess(files[:1]), preprocess(files)
        for n, pre, paths in ((1, pre1, files[:1]), (32, pre32, files)):
            out[f"image_b{n}"] = rate(lambda: model.get_image_features(pixel_values=pre), n)
            out[f"image_b{n}_pre"] = rate(lambda: model.get_image_features(pixel_values=preprocess(paths)), n)
            out[f"preprocess_b{n}"] = rate(lambda: preprocess(paths), n)
        for n in (1, 32):
            batch = texts[:n]
            enc = tok(batch, padding=True, return_tensors="pt")
            out[f"text_b{n}"] = rate(lambda: model.get_text_features(**enc), n)
            out[f"text_b{n}_pre"] = rate(
                lambda: model.get_text_features(**tok(batch, padding=True, return_tensors="pt")), n
            )
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "make-weights":
        make_weights(sys.argv[2])
    elif sys.argv[1] == "run":
        run(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    else:
        sys.exit(__doc__)
