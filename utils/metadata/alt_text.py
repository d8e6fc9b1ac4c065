"""What is written where: the caption as alt text in a photo's own metadata, or in an XMP sidecar beside it.

The fields: XMP ``dc:description`` (x-default), what Lightroom, Capture One, Photo Mechanic, digiKam and
darktable exchange descriptions through; XMP ``Iptc4xmpCore:AltTextAccessibility`` (x-default), IPTC's
own alt-text field; and where the format carries them, EXIF ``ImageDescription`` and IPTC (IIM)
``Caption-Abstract``, which older readers know. ExifTool edits the metadata without decoding the image,
into a new file that then replaces the photo by rename (see files.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from utils.files.atomic import replace_durably
from utils.files.checks import check_output_slot
from utils.metadata.exiftool import ExifTool, ExifToolStopped, absolute, clean_message, has_format_codes
from utils.metadata.files import check_writable, keep_attributes, remove_quietly, temp_beside, times_of
from utils.support.errors import CaptionError

logger = logging.getLogger(__name__)

XMP_DESCRIPTION = "XMP-dc:Description"
XMP_ALT_TEXT = "XMP-iptcCore:AltTextAccessibility"
EXIF_DESCRIPTION = "IFD0:ImageDescription"
IPTC_CAPTION = "IPTC:Caption-Abstract"
DESCRIPTION_TAGS = (XMP_DESCRIPTION, XMP_ALT_TEXT, EXIF_DESCRIPTION, IPTC_CAPTION)
MIME_TYPE = "File:MIMEType"
XMP_FIELDS = (XMP_DESCRIPTION, XMP_ALT_TEXT)
# What is read to tell whether a photo is described: an XMP field in every language it has (ExifTool's
# "-XMP-dc:Description*" gives "XMP-dc:Description-de" beside the x-default one). A photo its owner
# described only in German is described: writing an English x-default beside it would have readers
# show the machine's caption instead of the owner's words.
XMP_READ = tuple(f"{field}*" for field in XMP_FIELDS)
DESCRIPTIONS_READ = (*XMP_READ, EXIF_DESCRIPTION, IPTC_CAPTION)
IPTC_MAX_BYTES = 2000  # Caption-Abstract's limit in the IIM standard
# Writing copies the whole photo, so its time-out grows by a second per 10 MB: a 2 GB scan on a slow USB
# disk or a 100 Mbit/s share is then not taken for a hung ExifTool.
COPY_BYTES_PER_S = 10_000_000
# Photos whose descriptions one ExifTool command reads before captioning (described_photos): a command
# line of a few hundred names, and an answer of a few hundred small JSON records, far below ExifTool's
# bounded answer (exiftool.py); each file adds a little to the command's time-out for a slow disk.
DESCRIBED_CHUNK = 250
READ_S_PER_FILE = 0.1
# Letters and signs that have no ASCII form by decomposition, spelled as ASCII (for EXIF).
ASCII_SPELLING = {"ß": "ss", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O", "ł": "l", "Ł": "L",
                  "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "þ": "th", "Þ": "Th", "ı": "i", "‘": "'", "’": "'",
                  "“": '"', "”": '"', "–": "-", "—": "-", "⁄": "/"}


@dataclass(frozen=True)
class PhotoFormat:
    name: str
    fields: tuple[str, ...]
    extensions: tuple[str, ...]  # the names ExifTool accepts for it; it refuses to write a misnamed file


# ExifTool's MIME type (found from the content, not the name; TIFF-based RAW files have their own) ->
# what the format carries. PNG could take IPTC only in a non-standard text chunk and WebP has no IPTC
# at all: readers look for XMP there. Other formats (GIF, HEIC, RAW, BMP, ...) get the sidecar.
PHOTO_FORMATS: dict[str, PhotoFormat] = {
    "image/jpeg": PhotoFormat("JPEG", (*XMP_FIELDS, EXIF_DESCRIPTION, IPTC_CAPTION), (".jpg", ".jpeg", ".jpe")),
    "image/tiff": PhotoFormat("TIFF", (*XMP_FIELDS, EXIF_DESCRIPTION, IPTC_CAPTION), (".tif", ".tiff")),
    "image/png": PhotoFormat("PNG", (*XMP_FIELDS, EXIF_DESCRIPTION), (".png",)),
    "image/webp": PhotoFormat("WebP", (*XMP_FIELDS, EXIF_DESCRIPTION), (".webp",)),
}


@dataclass(frozen=True)
class MetadataOptions:
    sidecar: bool = False  # write an .xmp sidecar beside the photo instead of touching it
    overwrite: bool = False  # replace a description already there
    dry_run: bool = False  # report what would be written, change nothing


@dataclass(frozen=True)
class MetadataResult:
    action: Literal["written", "kept", "would-write"]  # kept: a description was there and no overwrite
    target: Path  # the file written or that would be written (the photo, or its sidecar)
    fields: tuple[str, ...]  # the tags written / to be written, ExifTool group:name
    existing: str | None  # the description found before (None if none)


def sidecar_path(photo: Path) -> Path:
    """``photo.jpg`` -> ``photo.jpg.xmp``: the name darktable and digiKam read by default, and one that
    cannot collide for ``photo.jpg`` and ``photo.nef`` side by side (Adobe's ``photo.xmp`` would)."""
    return photo.with_name(photo.name + ".xmp")


def clean_caption(caption: str) -> str:
    """The caption as stored: line breaks as LF, since XML reads CR LF and CR as LF anyway."""
    caption = caption.replace("\r\n", "\n").replace("\r", "\n")
    if not caption.strip():
        raise CaptionError("the caption is empty; nothing to write")
    # Control characters other than tab and newlines are not allowed in XML, so XMP cannot hold them.
    if any(unicodedata.category(c) == "Cc" and c not in "\t\n\r" for c in caption):
        raise CaptionError("the caption holds control characters, which XMP cannot store")
    return caption


def iptc_text(caption: str) -> str:
    """The caption cut to IPTC's 2000 bytes of UTF-8, on a character boundary."""
    data = caption.encode("utf-8")
    if len(data) <= IPTC_MAX_BYTES:
        return caption
    return data[:IPTC_MAX_BYTES].decode("utf-8", "ignore")


def exif_text(caption: str) -> str:
    """The caption in ASCII, the type EXIF (2.32 and earlier) gives ImageDescription: readers such as
    Pillow take its bytes as Latin-1, so UTF-8 would show 'Ã©' for 'é'. Accents are dropped (é -> e),
    a few letters spelled out (ß -> ss), and what has no ASCII form (猫, 🐈) becomes '?', so old software
    still shows the caption as nearly as it can, and no older description survives beside the new one."""
    text = "".join(_ascii_form(c) for c in unicodedata.normalize("NFC", caption))
    return text if text.strip() else "?"


def _ascii_form(char: str) -> str:
    if char.isascii():
        return char
    base = "".join(ASCII_SPELLING.get(c, c) for c in unicodedata.normalize("NFKD", char)
                   if not unicodedata.category(c).startswith("M"))
    if not base:  # a mark alone (NFC found no letter to put it on): the letter before it stands already
        return ""
    return base if base.isascii() else "?"


def existing_description(tags: dict[str, str]) -> str | None:
    """The photo's description in the first field that has one: its x-default text, or else its text in
    any other language (as ExifTool names it, ``XMP-dc:Description-de``)."""
    for tag in DESCRIPTION_TAGS:
        languages = [value for name, value in tags.items() if name.startswith(f"{tag}-")]
        for value in (tags.get(tag, ""), *languages):
            if str(value).strip():
                return str(value)
    return None


def described_photos(photos: Sequence[Path], options: MetadataOptions, exiftool: ExifTool | None = None,
                     chunk: int = DESCRIBED_CHUNK) -> dict[Path, MetadataResult]:
    """The photos that ``MetadataWriter.write`` would leave as they are because they are described
    already, found before any is captioned: ExifTool reads the descriptions of ``chunk`` files per
    command. Each answer is what ``write`` would give ("kept"). A photo this cannot tell about (ExifTool
    could not read it, or stopped) is not in the answer: it is captioned and written as usual, and the
    write finds out. Nothing is kept with ``options.overwrite``."""
    if options.overwrite or not photos:
        return {}
    tool = exiftool if exiftool is not None else ExifTool()
    found: dict[Path, MetadataResult] = {}
    try:
        for start in range(0, len(photos), chunk):
            part = [p for p in photos[start:start + chunk] if p.is_file()]
            try:
                found.update(_sidecars_described(tool, part) if options.sidecar else _photos_described(tool, part))
            except CaptionError as exc:  # ExifTool stopped or answered nonsense: these photos are captioned
                logger.debug("descriptions of %d photos not read before captioning: %s", len(part), exc)
    finally:
        if exiftool is None:
            tool.close()
    return found


def _photos_described(tool: ExifTool, photos: list[Path]) -> dict[Path, MetadataResult]:
    """What ``_write_embedded`` keeps: a format written into, with a description in it."""
    real = {photo: Path(os.path.realpath(photo)) for photo in photos}
    tags = tool.read_many(list(dict.fromkeys(real.values())), ("File:FileType", MIME_TYPE, *DESCRIPTIONS_READ),
                          allowance=READ_S_PER_FILE * len(photos))
    found = {}
    for photo, path in real.items():
        read = tags.get(absolute(path))
        if read is not None and read.get(MIME_TYPE, "") in PHOTO_FORMATS \
                and (existing := existing_description(read)) is not None:
            found[photo] = MetadataResult("kept", photo, (), existing)
    return found


def _sidecars_described(tool: ExifTool, photos: list[Path]) -> dict[Path, MetadataResult]:
    """What ``_write_sidecar`` keeps: a sidecar (a regular file, never a link) with a description, or
    else a photo with one."""
    sidecars = {photo: sidecar_path(photo) for photo in photos}
    regular = [side for side in sidecars.values() if os.path.lexists(side) and _is_regular(side)]
    linked = {photo for photo, side in sidecars.items() if os.path.lexists(side) and not _is_regular(side)}
    in_sidecars = tool.read_many(regular, XMP_READ, allowance=READ_S_PER_FILE * len(regular)) if regular else {}
    found = {}
    rest = []
    for photo, side in sidecars.items():
        if photo in linked:
            continue  # the write refuses a link at the sidecar's name; it says so
        read = in_sidecars.get(absolute(side))
        if read is not None and (existing := existing_description(read)) is not None:
            found[photo] = MetadataResult("kept", side, (), existing)
        elif side.exists() and read is None:
            continue  # a sidecar ExifTool could not read: the write says why
        else:
            rest.append(photo)
    real = {photo: Path(os.path.realpath(photo)) for photo in rest}
    tags = tool.read_many(list(dict.fromkeys(real.values())), DESCRIPTIONS_READ,
                          allowance=READ_S_PER_FILE * len(rest)) if rest else {}
    for photo, path in real.items():
        read = tags.get(absolute(path))
        if read is not None and (existing := existing_description(read)) is not None:
            found[photo] = MetadataResult("kept", sidecars[photo], (), existing)
    return found


def _is_regular(path: Path) -> bool:
    return not path.is_symlink() and path.is_file()


def assignments(fields: tuple[str, ...], caption: str) -> dict[str, str]:
    """Each field's value: the caption, cut to IPTC's limit for Caption-Abstract, in ASCII for EXIF."""
    special = {IPTC_CAPTION: iptc_text, EXIF_DESCRIPTION: exif_text}
    values = {field: special[field](caption) if field in special else caption for field in fields}
    if values.get(IPTC_CAPTION, caption) != caption:
        logger.warning("the caption is longer than IPTC's %d bytes; Caption-Abstract gets its start", IPTC_MAX_BYTES)
    return values


class MetadataWriter:
    """Writes captions into photos or their sidecars, with one ExifTool process for the whole run."""

    def __init__(self, options: MetadataOptions, exiftool: ExifTool | None = None) -> None:
        self.options = options
        self._exiftool = exiftool if exiftool is not None else ExifTool()
        self._values_dir: Path | None = None  # private folder for the files ExifTool reads values from

    def __enter__(self) -> MetadataWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._exiftool.close()
        if self._values_dir is not None:
            shutil.rmtree(self._values_dir, ignore_errors=True)
            self._values_dir = None

    def write(self, photo: Path, caption: str) -> MetadataResult:
        """Write ``caption`` for ``photo`` as the options say; CaptionError for a problem with this file."""
        caption = clean_caption(caption)
        if not photo.is_file():
            raise CaptionError(f"cannot write metadata for {photo}: it is not a file")
        try:
            if self.options.sidecar:
                return self._write_sidecar(photo, caption)
            return self._write_embedded(photo, caption)
        except ExifToolStopped as exc:
            raise ExifToolStopped(f"cannot write metadata for {photo}: {exc}", exc.reason) from exc
        except OSError as exc:  # the file or its folder changed under us (removed, a dangling link)
            raise CaptionError(f"cannot write metadata for {photo}: {exc.strerror or exc}") from exc

    def _write_embedded(self, photo: Path, caption: str) -> MetadataResult:
        real = Path(os.path.realpath(photo))  # a link's target is the photo; the link itself stays a link
        times = times_of(real)  # before any read sets the access time
        tags = self._exiftool.read_tags(real, ("File:FileType", MIME_TYPE, *DESCRIPTIONS_READ))
        fmt = PHOTO_FORMATS.get(tags.get(MIME_TYPE, ""))
        if fmt is None:
            file_type = tags.get("File:FileType")
            kind = f"a {file_type} file" if file_type else "not a format ExifTool knows"
            raise CaptionError(
                f"cannot write metadata into {photo}: it is {kind}, which this program does not write into; "
                "use --metadata-sidecar to write an .xmp file beside it"
            )
        return self._apply(photo, real, fmt.fields, existing_description(tags), caption, source=real, fmt=fmt,
                           times=times)

    def _write_sidecar(self, photo: Path, caption: str) -> MetadataResult:
        shown = target = sidecar_path(photo)
        # A link at the sidecar's name is never written through: whatever it points at (another photo, a
        # document) would be replaced by an XMP packet.
        check_output_slot(target)
        existing = None
        if target.exists():
            existing = existing_description(self._exiftool.read_tags(target, XMP_READ))
        if existing is None:
            # A description in the photo counts too: a sidecar that said otherwise would hide it in the
            # photo managers that prefer the sidecar. A photo ExifTool cannot read simply has none.
            try:
                existing = existing_description(self._exiftool.read_tags(Path(os.path.realpath(photo)),
                                                                         DESCRIPTIONS_READ))
            except ExifToolStopped:
                raise
            except CaptionError as exc:
                logger.debug("no description read from %s: %s", photo, exc)
        return self._apply(shown, target, XMP_FIELDS, existing, caption,
                           source=target if target.exists() else None)

    def _apply(self, shown: Path, target: Path, fields: tuple[str, ...], existing: str | None, caption: str,
               source: Path | None, fmt: PhotoFormat | None = None,
               times: tuple[int, int] | None = None) -> MetadataResult:
        """Write ``fields`` into ``target`` (from ``source``, or a new XMP file when None), policy first.
        ``times``: the access and modification times the result gets; None for the current time (a
        sidecar: photo managers notice an updated sidecar by its time)."""
        if existing is not None and not self.options.overwrite:
            return MetadataResult("kept", shown, (), existing)
        check_writable(target, shown, creating=source is None)
        if has_format_codes(str(target.parent)):
            raise CaptionError(f"cannot write {shown}: ExifTool reads '%' codes in its folder's name as a pattern")
        if self.options.dry_run:
            return MetadataResult("would-write", shown, fields, existing)
        values = assignments(fields, caption)
        hard_links = os.stat(target).st_nlink if source is not None else 1
        tmp = temp_beside(target, ".xmp" if self.options.sidecar else "")
        link: Path | None = None
        try:
            if source is not None and fmt is not None and source.suffix.lower() not in fmt.extensions:
                link = source = self._named_link(shown, source, fmt)
            self._edit(shown, source, tmp, values)
            if source is not None:
                keep_attributes(target, tmp, times)
            replace_durably(tmp, target)
        except OSError as exc:
            remove_quietly(tmp)
            raise CaptionError(f"cannot write {shown}: {exc.strerror or exc}; it was left as it was") from exc
        except BaseException:
            remove_quietly(tmp)
            raise
        finally:
            if link is not None:
                remove_quietly(link)
        if hard_links > 1:  # a rename gives the name a new file; the other names keep the old one
            logger.warning("%s had other hard links; they still show the old file", shown)
        return MetadataResult("written", shown, fields, existing)

    @staticmethod
    def _named_link(shown: Path, source: Path, fmt: PhotoFormat) -> Path:
        """A link to ``source`` named with its format's extension: ExifTool refuses to write a file whose
        name says another format (a PNG called .jpg), though it reads it."""
        link = temp_beside(source, fmt.extensions[0])
        try:
            os.symlink(source.name, link)
        except OSError as exc:
            named = f"named {source.suffix}" if source.suffix else "without an extension"
            raise CaptionError(
                f"cannot write metadata into {shown}: it is a {fmt.name} file {named}; rename it to {fmt.extensions[0]}"
            ) from exc
        return link

    def _value_file(self, field: str, value: str) -> Path:
        if self._values_dir is None:
            self._values_dir = Path(tempfile.mkdtemp(prefix="captioning-metadata-"))
        path = self._values_dir / f"{field.replace(':', '-')}.txt"
        path.write_bytes(value.encode("utf-8"))
        return path

    def _edit(self, shown: Path, source: Path | None, tmp: Path, values: dict[str, str]) -> None:
        """ExifTool writes the edited copy to ``tmp``; it is read back before it may replace anything."""
        args = ["-o", absolute(tmp)]
        if IPTC_CAPTION in values:
            # IIM is Latin-1 unless CodedCharacterSet says UTF-8; ExifTool then encodes the values as such.
            args += ["-charset", "iptc=UTF8", "-IPTC:CodedCharacterSet=UTF8"]
        # Each value is read from a file, byte for byte: no quoting, escaping or line rule can touch it.
        # An XMP field is a list of languages: "-x-default" replaces the default one and keeps the others
        # (without it, ExifTool would replace the whole list).
        args += [f"-{field}{'-x-default' if field in XMP_FIELDS else ''}<={absolute(self._value_file(field, value))}"
                 for field, value in values.items()]
        if source is not None:
            args.append(absolute(source))
        size = os.stat(source).st_size if source is not None else 0
        reply = self._exiftool.execute(*args, allowance=size / COPY_BYTES_PER_S)
        for warning in reply.warnings():
            logger.debug("ExifTool on %s: %s", shown, warning)
        if reply.errors() or not tmp.exists():
            why = clean_message(reply.errors()[0]) if reply.errors() else "ExifTool wrote nothing"
            raise CaptionError(f"cannot write metadata into {shown}: {why}; it was left as it was")
        written = self._exiftool.read_tags(tmp, tuple(values))
        wrong = [field for field, value in values.items() if written.get(field) != value]
        if wrong:
            raise CaptionError(
                f"cannot write metadata into {shown}: ExifTool did not store {', '.join(wrong)} as given; "
                "it was left as it was"
            )
