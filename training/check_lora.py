"""``python -m training.check_lora FILE [FILE ...]``: is a RayFlow LoRA file usable?

Runs the checks of the RayFlow LoRA Loader (:func:`rayflow.lora_file.validate_lora`) and prints
what the file is (family, rank, sigma, recipe, layers patched) or the one sentence saying why it is
unusable. Like the loader, it checks the fit to a model: every module must name a layer of the
model with a weight of the shape the module changes. The model is the standard one of the file's
family, built without weights from the configuration bundled in ``training/configs`` (SD1.5,
SDXL), or the diffusers folder given with ``--model`` (only its configs are read). Where neither
is available (a PixArt file without ``--model``), or with ``--no-fit-check``, the file is checked
alone (shapes against each other, coverage against the modules it declares) and the output says
that the fit was not checked. The module names are the diffusers ones the trainer writes (ComfyUI
also accepts the LDM names of the same layers, which this check does not know).

Exit code 0 when every file is usable, 1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Dict, List, Optional, Tuple

from rayflow.lora_file import LoraFileError, validate_lora
from rayflow.lora_header import ARCH_NAMES, read_metadata

from .lora_targets import config_targets, family_targets
from .models import ModelError


def _coverage(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:                  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.check_lora", allow_abbrev=False,
                                description="Check RayFlow LoRA files the way the RayFlow LoRA Loader does: the file "
                                            "itself and its fit to the model of its family (see --model).")
    p.add_argument("files", nargs="+", metavar="FILE", help="RayFlow LoRA .safetensors files")
    p.add_argument("--min-coverage", type=_coverage, default=1.0,
                   help="least fraction of its declared layers a file must patch, in [0, 1] (default: 1.0)")
    p.add_argument("--model", metavar="DIR", default="",
                   help="a diffusers model folder whose layers the files must fit; only its configs are read "
                        "(default: the bundled SD1.5 / SDXL configuration of each file's family)")
    p.add_argument("--no-fit-check", action="store_true",
                   help="check each file alone, without a model (the output says the fit was not checked)")
    return p


Targets = Optional[Dict[str, List[int]]]


def _targets(path: str, args, model: Optional[Tuple[str, Dict]]) -> Tuple[Targets, str]:
    """The layers ``path`` must fit, and a line saying what it was checked against."""
    arch = read_metadata(path)["architecture"]
    family = ARCH_NAMES[arch]
    if args.no_fit_check:
        return None, "fit to a model: not checked (--no-fit-check)"
    if model is not None:
        if model[0] != arch:
            raise LoraFileError(f"{os.path.basename(path)} is a RayFlow LoRA for {family}, but {args.model} is "
                                f"{ARCH_NAMES[model[0]]}; check it against a {family} model")
        return model[1], f"fit checked against the model in {args.model}"
    targets = family_targets(arch)
    if targets is None:
        return None, (f"fit to a model: not checked (no bundled {family} configuration; "
                      f"pass --model DIR with a {family} diffusers folder)")
    return targets, f"fit checked against the standard {family} model (training/configs/{arch})"


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    model = None
    if args.model and not args.no_fit_check:
        try:
            model = config_targets(os.path.abspath(args.model))
        except ModelError as exc:
            parser.error(f"--model: {exc}")
    ok = True
    for path in args.files:
        try:
            targets, against = _targets(path, args, model)
            print(validate_lora(path, targets, min_coverage=args.min_coverage).summary())
            print(f"  {against}")
        except LoraFileError as exc:
            print(f"unusable: {exc}")
            ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
