"""Command line: ``python -m model_export COMMAND ...`` (the commands: :data:`USAGE`)."""

from __future__ import annotations

import sys

USAGE = """usage: python -m model_export COMMAND [options]

commands:
  train      train a U-Net on image/mask folders, the DSB 2018 layout, or synthetic nuclei
  export     export a checkpoint to a verified, self-describing ONNX file
  soup       average the weights of fine-tunes of one file (e.g. two seeds) into one
             checkpoint, for export
  quantize   an int8 copy of an exported model for CPU serving (calibrated on training
             images; --check compares it with fp32 on the DSB validation split)
  evaluate   Dice and object F1 of an ONNX model (the service's pipeline) on folders or
             the DSB 2018 layout, beside a classical baseline (--baseline otsu)
  synth      write a synthetic nuclei data set (images/ + masks/) to a folder
  seal       add the checksum the service verifies at load to an exported ONNX file
  objects    set how an exported model's foreground becomes objects (e.g. the
             confidence cut chosen on validation data), with a new version; re-sealed
  bioimageio package an ONNX model for the bioimage.io model zoo (Fiji/deepImageJ, ilastik,
             QuPath); needs the bioimageio extra

`python -m model_export COMMAND --help` lists a command's options."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    # Imports are per command: `evaluate` and `quantize` must not pull in PyTorch.
    if command == "train":
        from model_export import train

        train.main(rest)
    elif command == "export":
        from model_export import export

        export.main(rest)
    elif command == "soup":
        from model_export import soup

        soup.main(rest)
    elif command == "quantize":
        from model_export import quantize

        return quantize.main(rest)
    elif command == "evaluate":
        from model_export import evaluate

        return evaluate.main(rest)
    elif command == "seal":
        from model_export import seal

        seal.main(rest)
    elif command == "objects":
        from model_export import objects_entry

        return objects_entry.main(rest)
    elif command == "synth":
        from model_export import synth

        synth.main(rest)
    elif command == "bioimageio":
        from model_export import bioimageio

        bioimageio.main(rest)
    else:
        print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
