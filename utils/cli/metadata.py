"""The photo-metadata options of the command line (docs/metadata.md)."""

from __future__ import annotations

import argparse

from utils.metadata.alt_text import MetadataOptions


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("alt text in photo metadata (-i)")
    g.add_argument("--write-metadata", action="store_true",
                   help="write each caption into its photo's metadata as description and alt text (XMP, and "
                        "EXIF/IPTC where the format has them); needs ExifTool")
    g.add_argument("--metadata-sidecar", action="store_true",
                   help="write each caption into an XMP sidecar beside the photo (photo.jpg.xmp) instead, "
                        "leaving the photo untouched")
    g.add_argument("--overwrite-metadata", action="store_true",
                   help="replace a description already there (otherwise such a photo is left alone and reported)")
    g.add_argument("--dry-run", action="store_true",
                   help="report what --write-metadata or --metadata-sidecar would write, and write no metadata")


def usage_error(args: argparse.Namespace) -> str | None:
    if args.write_metadata and args.metadata_sidecar:
        return "--write-metadata writes into the photos, --metadata-sidecar beside them: choose one"
    writing = args.write_metadata or args.metadata_sidecar
    if not writing:
        needs = [flag for flag, on in (("--overwrite-metadata", args.overwrite_metadata), ("--dry-run", args.dry_run))
                 if on]
        if needs:
            return f"{' and '.join(needs)} need{'s' if len(needs) == 1 else ''} --write-metadata or --metadata-sidecar"
    return None


def options(args: argparse.Namespace) -> MetadataOptions | None:
    if not (args.write_metadata or args.metadata_sidecar):
        return None
    return MetadataOptions(sidecar=args.metadata_sidecar, overwrite=args.overwrite_metadata, dry_run=args.dry_run)
