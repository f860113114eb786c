"""python -m convert pt2ms SRC DST [--model NAME] [--force] | ms2pt SRC DST [--model NAME] [--force] [--ema]"""
import argparse
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m convert", description=__doc__)
    sub = parser.add_subparsers(dest="direction", required=True)
    for name, help_text in (("pt2ms", "PyTorch .pth/.bin/.safetensors -> MindSpore .ckpt"),
                            ("ms2pt", "MindSpore .ckpt -> PyTorch .pth or .safetensors")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("src")
        p.add_argument("dst")
        p.add_argument("--model", default=None, help="architecture name (default: inferred from the tensors)")
        p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    sub.choices["ms2pt"].add_argument("--ema", action="store_true",
                                      help="the EMA weights of a train_ms.py checkpoint instead of its weights")
    args = parser.parse_args(argv)
    from ppt_cli import run_tool
    return run_tool(lambda: run(args), f"{args.dst} was not written")


def run(args) -> None:
    import convert
    start = time.perf_counter()
    fn = convert.pt2ms if args.direction == "pt2ms" else convert.ms2pt
    ema = {"ema": True} if getattr(args, "ema", False) else {}
    name = fn(args.src, args.dst, model=args.model, force=args.force, **ema)
    print(f"converted {args.src} -> {args.dst} ({name}) in {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    sys.exit(main())
