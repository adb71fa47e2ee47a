"""``nnunet-losses convert`` and ``nnunet-losses package`` (see :mod:`nnunet_losses.datasets`)."""
from __future__ import annotations

import argparse
import os

from nnunet_losses.cli.options import COUNT, DATASET_ID, add_option
from nnunet_losses.datasets import DATASETS, converter_class

CHALLENGES = ("brats2018", "kits19", "isic2018")


def _datasets_epilog() -> str:
    lines = ["datasets (default task first; --binary TASK picks a binary task; preferred dataset IDs in brackets):"]
    for key in DATASETS:
        cls = converter_class(key)
        tasks = ", ".join(f"{v.name}{' (binary)' if v.binary else ''} [{v.preferred_id}]"
                          for v in sorted(cls.variants.values(), key=lambda v: v.name != cls.default_variant))
        lines.append(f"  {key:13s} {tasks}")
    lines.append("Expected download layouts and sources: docs/datasets.md")
    return "\n".join(lines)


#: a used dataset id (``DatasetIDError``) and nnU-Net's verify_dataset_integrity's verdict on a broken download
#: (``AssertionError``, ``RuntimeError``): the source data, not our code, is at fault
CONVERT_ERRORS = (RuntimeError, AssertionError)


def _cmd_convert(args: argparse.Namespace) -> int:
    from nnunet_losses.datasets import convert
    options = {}
    if args.perfusion is not None:
        options["perfusion"] = args.perfusion
    if args.modalities is not None:
        options["modalities"] = [m for m in args.modalities.split(",") if m]
    if args.exclude_flawed:
        options["exclude_flawed"] = True
    out = convert(args.dataset, args.source, dataset_id=args.d, binary=args.binary, name=args.name,
                  exclude=args.exclude, num_processes=args.np, verify=not args.no_verify, **options)
    print(out)
    return 0


def _cmd_package(args: argparse.Namespace) -> int:
    from nnunet_losses.datasets.packaging import package
    written = package(args.challenge, args.predictions, args.output, args.ref, variant=args.variant)
    print(f"wrote {len(written)} file(s) to {args.output}")
    return 0


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="convert a public dataset, as downloaded, into an nnU-Net raw dataset",
        description="Convert a public dataset of the three loss papers (volume bias, Dice/Jaccard, DSC++), as "
                    "downloaded from its official source, into $nnUNet_raw/DatasetXXX_Name (dataset.json by nnU-Net's generate_dataset_json, checked by "
                    "nnU-Net's verify_dataset_integrity). The download is only read.",
        epilog=_datasets_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", metavar="DATASET", choices=list(DATASETS), help="one of: " + ", ".join(DATASETS))
    p.add_argument("source", metavar="SOURCE", help="the extracted download (see docs/datasets.md)")
    add_option(p, "-d", old=("--id",), type=DATASET_ID, default=None, metavar="ID",
               help="nnU-Net dataset ID (refused if used in nnUNet_raw/preprocessed/results); "
                    "default: the first free ID from the task's preferred one")
    p.add_argument("--binary", nargs="?", const=True, default=None, metavar="TASK",
                   help="a binary task instead of the default one (BraTS: wt [default], tc, et; "
                        "KiTS19: kidney [default], tumour); the other datasets are binary already")
    p.add_argument("--name", default=None, help="dataset name (default e.g. BraTS2018WT)")
    p.add_argument("--exclude", nargs="+", default=[], metavar="CASE", help="case IDs to leave out")
    add_option(p, "-np", old=("--num-processes", "--num_processes"), type=COUNT, default=min(4, os.cpu_count() or 1),
               metavar="N", help="worker processes for conversion and the integrity check (default: %(default)s)")
    add_option(p, "--no_verify", old=("--no-verify",), action="store_true",
               help="skip nnU-Net's verify_dataset_integrity")
    g = p.add_argument_group("ISLES 2017 / 2018")
    g.add_argument("--perfusion", choices=("maps", "none", "raw"), default=None,
                   help="maps (default, as the volume-bias and Dice/Jaccard papers): perfusion parameter maps in, "
                        "raw 4D perfusion series out; none: parameter maps out too; raw: also the raw series, as its temporal max and mean")
    g.add_argument("--modalities", default=None, metavar="A,B,...",
                   help="explicit channel list, e.g. ADC,Tmax (ISLES 2017) or CT,CBF,CBV,MTT,Tmax,DWI (ISLES 2018)")
    g = p.add_argument_group("KiTS19")
    add_option(g, "--exclude_flawed", old=("--exclude-flawed",), action="store_true",
               help="leave out cases 15, 23, 37, 68, 125, 133 (label problems; excluded by nnU-Net and DSC++)")
    p.set_defaults(func=_cmd_convert, user_errors=CONVERT_ERRORS)

    p = subparsers.add_parser(
        "package", help="write predictions as a challenge submission (file names, labels, geometry)",
        description="Write nnU-Net predictions (or thresholded label maps) with the file names and label encoding a "
                    "challenge expects, their geometry checked against the reference images; never overwrites. "
                    "brats2018: CASE.nii.gz with labels 0/1/2/4; kits19: prediction_XXXXX.nii.gz with 0/1/2; "
                    "isic2018: ISIC_XXXXXXX_segmentation.png with 0/255.")
    p.add_argument("challenge", metavar="CHALLENGE", choices=CHALLENGES, help="one of: " + ", ".join(CHALLENGES))
    p.add_argument("predictions", metavar="PREDICTIONS", help="folder of predictions (CASE.nii.gz / CASE.png)")
    p.add_argument("output", metavar="OUTPUT", help="folder to write the submission files into")
    add_option(p, "-ref", old=("--reference",), required=True, metavar="FOLDER",
               help="the official images of the predicted cases (download folder or nnU-Net imagesTs)")
    p.add_argument("--variant", default=None,
                   help="the task the predictions are of (brats2018: regions, wt, tc, et; kits19: multiclass, "
                        "kidney, tumour); default: from PREDICTIONS/dataset.json, else the challenge's full task")
    p.set_defaults(func=_cmd_package, user_errors=(KeyError,))
