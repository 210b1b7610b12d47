"""``python -m training.check_lora FILE [FILE ...]``: is a RayFlow LoRA file usable?

Runs the checks of the RayFlow LoRA Loader (:func:`rayflow.lora_file.validate_lora`, without a
model: shapes are checked against each other, coverage against the modules the file declares) and
prints what the file is (family, rank, sigma, recipe, layers covered) or the one sentence saying
why it is unusable. Exit code 0 when every file is usable, 1 otherwise (2 for bad arguments).
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from rayflow.lora_file import LoraFileError, validate_lora


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.check_lora", allow_abbrev=False,
                                description="Check RayFlow LoRA files the way the RayFlow LoRA Loader does.")
    p.add_argument("files", nargs="+", metavar="FILE", help="RayFlow LoRA .safetensors files")
    p.add_argument("--min-coverage", type=float, default=1.0,
                   help="least fraction of its declared layers a file must hold (default: 1.0)")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    ok = True
    for path in args.files:
        try:
            print(validate_lora(path, min_coverage=args.min_coverage).summary())
        except LoraFileError as exc:
            print(f"unusable: {exc}")
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
