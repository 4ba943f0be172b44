"""Validation accuracy of `.tflite` files with LiteRT, and top-1 agreement with a reference (e.g. fp32).

    python -m keras_cmt.tflite.evaluate cmt_ti_int8.tflite [--reference cmt_ti_fp32.tflite] --dataset digits
        [--limit N] [--json results.json]

Images come from the training command's validation split and evaluation transform
(`keras_cmt.tflite.representative_data`), as RGB [0, 255] - the converted models' input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from keras_cmt import quiet


def _open(path, threads):
    """A LiteRT interpreter for `path`; a file LiteRT cannot read is one ValueError line naming it."""
    from keras_cmt.tflite.runner import LiteRTModel

    try:
        return LiteRTModel(path, num_threads=threads)
    except FileNotFoundError:
        raise
    except (ValueError, RuntimeError) as e:
        detail = " ".join(str(e).split())[:200] or type(e).__name__
        raise ValueError(f"{path}: not a readable .tflite model ({detail}).") from None


def evaluate(models, dataset: str, reference=None, limit=None, data_dir=None, threads: int = 2) -> dict:
    from keras_cmt.tflite import representative_data

    paths = list(models) + ([reference] if reference and reference not in models else [])
    opened = {p: _open(p, threads) for p in paths}  # every file checked before the data is read
    size = opened[paths[0]].input_shape[1]
    images, labels = representative_data.load_images(dataset, size, limit=limit, split="validation", data_dir=data_dir)
    predictions = {p: opened[p].predict(images).argmax(-1) for p in paths}
    results = {"dataset": dataset, "images": int(len(images)), "image_size": int(size), "models": []}
    for p in paths:
        entry = {"model": os.path.basename(p), "accuracy": float((predictions[p] == labels).mean())}
        if reference:
            entry["top1_agreement_with_reference"] = float((predictions[p] == predictions[reference]).mean())
            entry["accuracy_drop_points"] = 100.0 * float(
                (predictions[reference] == labels).mean() - (predictions[p] == labels).mean()
            )
        results["models"].append(entry)
    results["reference"] = os.path.basename(reference) if reference else None
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m keras_cmt.tflite.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--dataset", required=True, help="digits, a folder of class sub-folders or a tfds name")
    p.add_argument("--reference", default=None, help="model whose top-1 the others are compared with")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--json", default=None)
    quiet.add_verbose_argument(p)
    args = p.parse_args(argv)
    try:
        results = evaluate(args.models, args.dataset, args.reference, args.limit, args.data_dir)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    for m in results["models"]:
        extra = ""
        if "top1_agreement_with_reference" in m:
            extra = (
                f"  agreement {100 * m['top1_agreement_with_reference']:.1f}%  drop {m['accuracy_drop_points']:+.2f} pt"
            )
        print(
            f"{m['model']}: accuracy {100 * m['accuracy']:.2f}% on {results['images']} {results['dataset']} "
            f"images{extra}"
        )
    if args.json:
        from keras_cmt.tflite.convert import write_atomically

        write_atomically(args.json, (json.dumps(results, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
