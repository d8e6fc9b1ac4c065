"""Captions written as alt text into photos' metadata, or into XMP sidecars, with ExifTool."""

from utils.metadata.alt_text import MetadataOptions, MetadataResult, MetadataWriter, sidecar_path
from utils.metadata.exiftool import require_exiftool

__all__ = ["MetadataOptions", "MetadataResult", "MetadataWriter", "require_exiftool", "sidecar_path"]
