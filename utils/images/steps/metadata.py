"""--write-metadata, --metadata-sidecar: each caption into its photo's metadata (or an XMP sidecar), with
one ExifTool process for the whole run (docs/metadata.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from utils.images.inputs import InputItem
from utils.images.steps import CaptionedImage, Step
from utils.metadata import MetadataOptions, MetadataResult, MetadataWriter, require_exiftool
from utils.metadata.alt_text import described_photos
from utils.output.records import Section
from utils.support.errors import CaptionError
from utils.support.text import printable, shortened

if TYPE_CHECKING:
    from utils.images.job import ImageJob

SHOWN_DESCRIPTION_CHARS = 200  # a description found in a photo is quoted this far in text output


@dataclass(frozen=True)
class MetadataOutcome(Section):
    """What was done with one photo's metadata, or why it could not be."""

    key = "metadata"
    columns = ("metadata",)

    result: MetadataResult | None
    failure: str | None = None

    def json(self) -> Any:
        if self.result is None:
            return {"action": "failed", "error": self.failure}
        r = self.result
        return {"action": r.action, "target": str(r.target), "fields": list(r.fields), "existing": r.existing}

    def note(self) -> str | None:
        """A description left alone, or (--dry-run) what would be written: a write that went as asked
        needs no words."""
        r = self.result
        if r is None or r.action == "written":
            return None
        if r.action == "kept":
            return (f"metadata kept: {printable(str(r.target))} is already described as "
                    f"{shortened(r.existing or '', SHOWN_DESCRIPTION_CHARS)!r} (--overwrite-metadata replaces it)")
        replaces = f", replacing {shortened(r.existing, SHOWN_DESCRIPTION_CHARS)!r}" if r.existing else ""
        return f"would write to {printable(str(r.target))}: {', '.join(r.fields)}{replaces}"

    def cells(self) -> tuple[Any, ...]:
        return ("failed" if self.result is None else self.result.action,)

    @property
    def error(self) -> str | None:
        return self.failure




class WriteMetadata(Step):
    """A failure is that photo's (its caption still stands); the run goes on and ends with exit status 1.
    Only the input itself is written, never an annotated copy saved with -s (a separate file by
    construction)."""

    section = MetadataOutcome

    def __init__(self, options: MetadataOptions) -> None:
        self.options = options
        self._writer: MetadataWriter | None = None

    @classmethod
    def from_job(cls, job: ImageJob) -> WriteMetadata | None:
        return cls(job.metadata) if job.metadata is not None else None

    def check(self, items: list[InputItem]) -> None:
        if any(item.path is not None for item in items):
            require_exiftool()

    def skip(self, items: list[InputItem]) -> dict[InputItem, Section] | None:
        """A photo described already is kept whatever its caption (without --overwrite-metadata), so it
        is not captioned: ExifTool reads the descriptions of many photos per command, before any model
        loads (a re-run over a folder that is done loads none)."""
        photos = [item.path for item in items if item.path is not None]
        kept = described_photos(photos, self.options)
        return {item: MetadataOutcome(kept[item.path]) for item in items
                if item.path is not None and item.path in kept}

    def run(self, image: CaptionedImage, earlier: list[Section]) -> MetadataOutcome:
        assert image.item.path is not None
        if self._writer is None:  # started on the first photo: one process, used from this thread only
            self._writer = MetadataWriter(self.options)
        try:
            return MetadataOutcome(self._writer.write(image.item.path, image.result.caption))
        except CaptionError as exc:
            return MetadataOutcome(None, image.item.naming(str(exc)))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
