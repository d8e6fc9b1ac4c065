"""Captions written as alt text into photos' metadata, or into XMP sidecars, with ExifTool."""

from utils.metadata.exiftool import require_exiftool
from utils.metadata.writer import MetadataOptions, MetadataResult, MetadataWriter, sidecar_path

__all__ = ["MetadataOptions", "MetadataResult", "MetadataWriter", "require_exiftool", "sidecar_path"]
