"""python -m convert pt2ms SRC DST [--model NAME] [--force]
                 | ms2pt SRC DST [--model NAME] [--format hf] [--ema] [--force]

SRC may be a Hugging Face transformers model folder (config.json and its weights)."""
import argparse
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m convert", description=__doc__)
    sub = parser.add_subparsers(dest="direction", required=True)
    for name, help_text in (("pt2ms", "PyTorch .pth/.bin/.safetensors -> MindSpore .ckpt"),
                            ("ms2pt", "MindSpore .ckpt -> PyTorch .pth or .safetensors, or a Hugging Face folder")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("src")
        p.add_argument("dst")
        p.add_argument("--model", default=None, help="architecture name (default: inferred from the tensors)")
        p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
        if name == "ms2pt":
            p.add_argument("--format", choices=("pth", "safetensors", "hf"), default=None,
                           help="pth or safetensors (default: from DST's suffix), or hf: DST is a folder that "
                                "transformers' from_pretrained loads (config.json + model.safetensors)")
            p.add_argument("--ema", action="store_true",
                           help="the EMA weights of a train_ms.py checkpoint instead of its weights")
    args = parser.parse_args(argv)
    from ppt_cli import run_tool
    return run_tool(lambda: run(args), f"{args.dst} was not written")


def run(args) -> None:
    import convert
    start = time.perf_counter()
    if args.direction == "pt2ms":
        name = convert.pt2ms(args.src, args.dst, model=args.model, force=args.force)
    else:
        name = convert.ms2pt(args.src, args.dst, model=args.model, force=args.force, format=args.format,
                            ema=args.ema)
    print(f"converted {args.src} -> {args.dst} ({name}) in {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    sys.exit(main())
