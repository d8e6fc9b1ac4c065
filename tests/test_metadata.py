"""Captions written into photos' metadata and XMP sidecars: real ExifTool, real files, read back by two
independent readers (ExifTool and Pillow / the XML parser), pixels and every other tag compared."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, IptcImagePlugin

from utils.images.inputs import expand_inputs
from utils.metadata import MetadataOptions, MetadataResult, MetadataWriter, require_exiftool, sidecar_path
from utils.metadata import exiftool as exiftool_module
from utils.metadata.alt_text import IPTC_MAX_BYTES
from utils.metadata.exiftool import ExifTool, ExifToolStopped, encode_arg, parse_version
from utils.metadata.files import TEMP_MARKER, is_temp_name
from utils.support.errors import CaptionError

XMP_DESC, ALT, EXIF_DESC, IPTC_CAP = (
    "XMP-dc:Description", "XMP-iptcCore:AltTextAccessibility", "IFD0:ImageDescription", "IPTC:Caption-Abstract",
)
ALL_FIELDS = (XMP_DESC, ALT, EXIF_DESC, IPTC_CAP)
FIELDS = {"jpg": ALL_FIELDS, "tif": ALL_FIELDS, "png": (XMP_DESC, ALT, EXIF_DESC), "webp": (XMP_DESC, ALT, EXIF_DESC)}
PIL_FORMAT = {"jpg": "JPEG", "tif": "TIFF", "png": "PNG", "webp": "WEBP"}
NS = {
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "Iptc4xmpCore": "http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/",
    "xml": "http://www.w3.org/XML/1998/namespace",
}
# Tags ExifTool adds because a standard requires them beside a new block (IPTC's record versions and
# character set, XMP's toolkit name): allowed to appear; everything else must be as it was.
STRUCTURAL = {"CodedCharacterSet", "EnvelopeRecordVersion", "ApplicationRecordVersion", "XMPToolkit"}
# Where the image data lies: TIFF's pointers to it move when the metadata before it grows (the data
# itself is compared, decoded).
MOVED = {"XMPToolkit", "StripOffsets", "TileOffsets", "ThumbnailOffset"}
PAST_NS = 1_500_000_000_123_456_789  # 2017, with nanoseconds, as mtime
PAST_ATIME_NS = 1_400_000_000_987_654_321


@pytest.fixture(autouse=True)
def _exiftool_installed() -> None:
    # CI installs ExifTool (.ci/run); a missing one must fail these tests, never skip them.
    try:
        require_exiftool()
    except CaptionError as exc:
        pytest.fail(str(exc))


def exiftool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["exiftool", *map(str, args)], capture_output=True, text=True, check=True, timeout=60)


def set_tags(path: Path, *assignments: str) -> None:
    exiftool("-overwrite_original", "-charset", "iptc=UTF8", *assignments, path)


def read_json(path: Path) -> dict[str, object]:
    out = exiftool("-j", "-G1", "-a", "-charset", "filename=UTF8", os.path.abspath(path)).stdout
    record: dict[str, object] = json.loads(out, parse_int=str, parse_float=str)[0]
    return record


def listing(path: Path) -> Counter[str]:
    """``exiftool -a -G1 -s``, minus the file system's own entries (size, dates, permissions, name)."""
    out = exiftool("-a", "-G1", "-s", os.path.abspath(path)).stdout
    return Counter(line for line in out.splitlines() if not line.startswith(("[File]", "[System]", "[ExifTool]")))


def tag_name(line: str) -> str:
    return line.split("]", 1)[1].split(":", 1)[0].strip()


def pixels(path: Path) -> tuple[str, tuple[int, int], bytes]:
    with Image.open(path) as im:
        return im.mode, im.size, im.tobytes()


@functools.cache
def srgb_profile() -> bytes:  # made once: a profile records the time it was made
    return bytes(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())


def make_photo(folder: Path, ext: str, name: str | None = None) -> Path:
    """A photo with a camera's metadata: EXIF make, model, date, GPS; XMP rating and keyword; IPTC keyword
    (where the format has IPTC); an ICC profile."""
    path = folder / (name or f"photo.{ext}")
    rng = np.random.default_rng(len(ext))
    array = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(array).save(path, format=PIL_FORMAT[ext], icc_profile=srgb_profile())
    tags = ["-IFD0:Make=Acme", "-IFD0:Model=Lens 9", "-ExifIFD:DateTimeOriginal=2020:01:02 03:04:05",
            "-GPSLatitude=48.8584", "-GPSLatitudeRef=N", "-GPSLongitude=2.2945", "-GPSLongitudeRef=E",
            "-XMP-xmp:Rating=4", "-XMP-dc:Subject=cat"]
    if ext in ("jpg", "tif"):
        tags.append("-IPTC:Keywords=chat")
    set_tags(path, *tags)
    return path


def age(path: Path, mode: int = 0o640) -> os.stat_result:
    os.chmod(path, mode)
    os.utime(path, ns=(PAST_ATIME_NS, PAST_NS))
    return os.stat(path)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if is_temp_name(p.name) or TEMP_MARKER in p.name)


def xmp_packet(path: Path) -> ET.Element:
    with Image.open(path) as im:
        raw = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp")
    assert raw, f"Pillow finds no XMP in {path}"
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    return ET.fromstring(text[text.index("<x:xmpmeta"):text.rindex("</x:xmpmeta>") + len("</x:xmpmeta>")])


def xmp_alt(root: ET.Element, prop: str) -> dict[str, str]:
    """A lang-alt property of an XMP packet: {language: text}."""
    found = root.findall(f".//{prop}/rdf:Alt/rdf:li", NS)
    return {li.attrib[f"{{{NS['xml']}}}lang"]: li.text or "" for li in found}


def check_with_pillow(path: Path, ext: str, caption: str, exif: str | None = None) -> None:
    """XMP and IPTC hold ``caption``, EXIF ``exif`` (the caption itself by default), as Pillow reads them."""
    root = xmp_packet(path)
    assert xmp_alt(root, "dc:description") == {"x-default": caption}
    assert xmp_alt(root, "Iptc4xmpCore:AltTextAccessibility") == {"x-default": caption}
    with Image.open(path) as im:
        # EXIF types ImageDescription ASCII; Pillow decodes it byte for byte as Latin-1.
        assert im.getexif()[0x010E] == (caption if exif is None else exif)
        assert im.getexif()[0x010E].isascii()
        if ext in ("jpg", "tif"):
            iptc = IptcImagePlugin.getiptcinfo(im)
            assert iptc is not None
            assert iptc[(2, 120)] == caption.encode("utf-8")[:IPTC_MAX_BYTES]
            assert iptc[(1, 90)] == b"\x1b%G"  # CodedCharacterSet: UTF-8


@pytest.fixture
def writer() -> Iterator[MetadataWriter]:
    with MetadataWriter(MetadataOptions()) as w:
        yield w


# --- the four formats -------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["jpg", "png", "tif", "webp"])
def test_writes_every_field_losslessly(tmp_path: Path, writer: MetadataWriter, ext: str) -> None:
    photo = make_photo(tmp_path, ext)
    before_pixels, before_tags = pixels(photo), listing(photo)
    with Image.open(photo) as im:
        icc = im.info.get("icc_profile")
    assert icc == srgb_profile()
    caption = "a cat sitting on a wooden table"
    before_stat = age(photo)  # after the reads above, which set the access time

    result = writer.write(photo, caption)

    after_stat = os.stat(photo)  # before the reads below
    assert result == MetadataResult("written", photo, FIELDS[ext], None)
    tags = read_json(photo)
    for field in FIELDS[ext]:
        assert tags[field] == caption
    if ext in ("jpg", "tif"):
        assert tags["IPTC:CodedCharacterSet"] == "UTF8"
    check_with_pillow(photo, ext, caption)
    assert pixels(photo) == before_pixels
    with Image.open(photo) as im:
        assert im.format == PIL_FORMAT[ext]
        assert im.info.get("icc_profile") == icc
    after_tags = listing(photo)
    lost = before_tags - after_tags
    assert {tag_name(line) for line in lost} <= MOVED, lost
    new_names = {tag_name(line) for line in after_tags - before_tags}
    assert new_names <= {f.split(":")[1] for f in FIELDS[ext]} | STRUCTURAL | MOVED, new_names
    assert stat.S_IMODE(after_stat.st_mode) == 0o640
    assert (after_stat.st_mtime_ns, after_stat.st_atime_ns) == (PAST_NS, PAST_ATIME_NS)
    assert (after_stat.st_uid, after_stat.st_gid) == (before_stat.st_uid, before_stat.st_gid)
    assert after_stat.st_ino != before_stat.st_ino  # replaced by rename, not rewritten in place
    assert leftovers(tmp_path) == []


def test_format_comes_from_the_content_not_the_name(tmp_path: Path, writer: MetadataWriter) -> None:
    png = make_photo(tmp_path, "png")
    disguised = png.rename(tmp_path / "really_a_png.jpg")
    before = pixels(disguised)
    result = writer.write(disguised, "a png in disguise")
    assert result.fields == FIELDS["png"]
    with Image.open(disguised) as im:
        assert im.format == "PNG"
    assert pixels(disguised) == before
    check_with_pillow(disguised, "png", "a png in disguise")


@pytest.mark.parametrize("fmt", ["BMP", "GIF"])
def test_other_formats_are_refused_with_a_pointer_to_the_sidecar(tmp_path: Path, writer: MetadataWriter,
                                                                  fmt: str) -> None:
    photo = tmp_path / f"photo.{fmt.lower()}"
    Image.new("RGB", (8, 8), "red").save(photo, format=fmt)
    data = photo.read_bytes()
    with pytest.raises(CaptionError, match="--metadata-sidecar") as err:
        writer.write(photo, "a red square")
    assert "\n" not in str(err.value) and fmt in str(err.value)
    assert photo.read_bytes() == data
    assert leftovers(tmp_path) == []


def test_not_an_image_at_all(tmp_path: Path, writer: MetadataWriter) -> None:
    junk = tmp_path / "notes.jpg"
    junk.write_bytes(b"just some text, not a photo\n")
    with pytest.raises(CaptionError, match="--metadata-sidecar"):
        writer.write(junk, "text")
    assert junk.read_bytes() == b"just some text, not a photo\n"


def test_missing_photo(tmp_path: Path, writer: MetadataWriter) -> None:
    with pytest.raises(CaptionError, match="not a file"):
        writer.write(tmp_path / "gone.jpg", "x")


# --- already described, overwrite, dry run ----------------------------------------------------------


@pytest.mark.parametrize("field", ALL_FIELDS)
def test_a_description_already_there_is_kept(tmp_path: Path, writer: MetadataWriter, field: str) -> None:
    photo = make_photo(tmp_path, "jpg")
    set_tags(photo, f"-{field}=written by the photographer")
    data, mtime = photo.read_bytes(), photo.stat().st_mtime_ns
    result = writer.write(photo, "a cat")
    assert result == MetadataResult("kept", photo, (), "written by the photographer")
    assert photo.read_bytes() == data and photo.stat().st_mtime_ns == mtime


def test_a_blank_description_does_not_count(tmp_path: Path, writer: MetadataWriter) -> None:
    photo = make_photo(tmp_path, "jpg")
    set_tags(photo, "-IFD0:ImageDescription=   ")  # cameras write blanks here
    result = writer.write(photo, "a cat")
    assert result.action == "written" and result.existing is None
    assert read_json(photo)[EXIF_DESC] == "a cat"


def test_overwrite_replaces_the_description_and_reports_the_old_one(tmp_path: Path) -> None:
    photo = make_photo(tmp_path, "jpg")
    set_tags(photo, "-XMP-dc:Description=old words", "-XMP-dc:Description-de=alte Worte",
             "-IPTC:Caption-Abstract=old words")
    with MetadataWriter(MetadataOptions(overwrite=True)) as writer:
        result = writer.write(photo, "new words")
    assert result == MetadataResult("written", photo, ALL_FIELDS, "old words")
    tags = read_json(photo)
    assert all(tags[f] == "new words" for f in ALL_FIELDS)
    assert tags["XMP-dc:Description-de"] == "alte Worte"  # other languages stay
    assert xmp_alt(xmp_packet(photo), "dc:description") == {"x-default": "new words", "de": "alte Worte"}


@pytest.mark.parametrize("sidecar", [False, True])
def test_dry_run_changes_nothing(tmp_path: Path, sidecar: bool) -> None:
    photo = make_photo(tmp_path, "jpg")
    data, st = photo.read_bytes(), age(photo)
    with MetadataWriter(MetadataOptions(sidecar=sidecar, dry_run=True)) as writer:
        result = writer.write(photo, "a cat")
    target = sidecar_path(photo) if sidecar else photo
    assert result == MetadataResult("would-write", target, (XMP_DESC, ALT) if sidecar else ALL_FIELDS, None)
    assert photo.read_bytes() == data
    after = os.stat(photo)  # (reading sets the access time, as any reader does)
    assert (after.st_mtime_ns, after.st_ctime_ns, after.st_ino) == (st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.jpg"]


def test_dry_run_reports_kept_too(tmp_path: Path) -> None:
    photo = make_photo(tmp_path, "png")
    set_tags(photo, "-XMP-iptcCore:AltTextAccessibility=described")
    with MetadataWriter(MetadataOptions(dry_run=True)) as writer:
        assert writer.write(photo, "a cat") == MetadataResult("kept", photo, (), "described")


def test_dry_run_still_reports_a_read_only_photo(tmp_path: Path) -> None:
    photo = make_photo(tmp_path, "jpg")
    os.chmod(photo, 0o444)
    with MetadataWriter(MetadataOptions(dry_run=True)) as writer, pytest.raises(CaptionError, match="read-only"):
        writer.write(photo, "a cat")


# --- sidecars ---------------------------------------------------------------------------------------


def test_sidecar_is_created_beside_the_photo_which_stays_untouched(tmp_path: Path) -> None:
    photo = make_photo(tmp_path, "jpg")
    data, st = photo.read_bytes(), age(photo)
    with MetadataWriter(MetadataOptions(sidecar=True)) as writer:
        result = writer.write(photo, "a cat, \"on\" a mat")
    side = tmp_path / "photo.jpg.xmp"
    assert result == MetadataResult("written", side, (XMP_DESC, ALT), None)
    assert photo.read_bytes() == data and os.stat(photo).st_mtime_ns == st.st_mtime_ns
    tags = read_json(side)
    assert tags["File:FileType"] == "XMP"
    assert tags[XMP_DESC] == tags[ALT] == "a cat, \"on\" a mat"
    root = ET.parse(side).getroot()
    assert xmp_alt(root, "dc:description") == {"x-default": "a cat, \"on\" a mat"}
    assert xmp_alt(root, "Iptc4xmpCore:AltTextAccessibility") == {"x-default": "a cat, \"on\" a mat"}
    assert leftovers(tmp_path) == []


def test_sidecar_update_keeps_its_other_fields_and_attributes(tmp_path: Path) -> None:
    photo = make_photo(tmp_path, "png")
    side = sidecar_path(photo)
    exiftool("-o", side, "-XMP-xmp:Rating=5", "-XMP-dc:Subject=holiday", "-XMP-dc:Description=draft")
    st = age(side, 0o600)
    before = listing(side)
    with MetadataWriter(MetadataOptions(sidecar=True, overwrite=True)) as writer:
        result = writer.write(photo, "the final words")
    assert result == MetadataResult("written", side, (XMP_DESC, ALT), "draft")
    tags = read_json(side)
    assert tags["XMP-xmp:Rating"] == "5" and tags["XMP-dc:Subject"] == "holiday"
    assert tags[XMP_DESC] == tags[ALT] == "the final words"
    lost = {tag_name(line) for line in before - listing(side)}
    assert lost <= {"Description"}
    after = os.stat(side)
    # Permissions stay; the time is new, so that photo managers notice the updated sidecar.
    assert stat.S_IMODE(after.st_mode) == 0o600 and after.st_mtime_ns > st.st_mtime_ns
    assert leftovers(tmp_path) == []


def test_sidecar_with_a_description_is_kept(tmp_path: Path) -> None:
    photo = make_photo(tmp_path, "jpg")
    side = sidecar_path(photo)
    exiftool("-o", side, "-XMP-dc:Description=already")
    data = side.read_bytes()
    with MetadataWriter(MetadataOptions(sidecar=True)) as writer:
        assert writer.write(photo, "a cat") == MetadataResult("kept", side, (), "already")
    assert side.read_bytes() == data


def test_sidecar_is_not_written_when_the_photo_itself_is_described(tmp_path: Path) -> None:
    photo = make_photo(tmp_path, "jpg")
    set_tags(photo, "-IPTC:Caption-Abstract=in the photo")
    with MetadataWriter(MetadataOptions(sidecar=True)) as writer:
        assert writer.write(photo, "a cat") == MetadataResult("kept", sidecar_path(photo), (), "in the photo")
    assert not sidecar_path(photo).exists()


@pytest.mark.parametrize("name,content", [("scan.bmp", None), ("DSC_0001.NEF", b"II*\x00" + bytes(range(256)) * 8),
                                          ("clip.bin", b"\x00\x01 not any known format")])
def test_sidecar_works_for_any_file(tmp_path: Path, name: str, content: bytes | None) -> None:
    photo = tmp_path / name
    if content is None:
        Image.new("RGB", (8, 8), "blue").save(photo, format="BMP")
    else:
        photo.write_bytes(content)
    data = photo.read_bytes()
    with MetadataWriter(MetadataOptions(sidecar=True)) as writer:
        result = writer.write(photo, "a blue square")
    assert result.action == "written" and result.target == tmp_path / f"{name}.xmp"
    assert photo.read_bytes() == data
    assert read_json(result.target)[XMP_DESC] == "a blue square"


# --- permissions, read-only, full disk, interruption ------------------------------------------------


def test_read_only_photo_is_refused(tmp_path: Path, writer: MetadataWriter) -> None:
    photo = make_photo(tmp_path, "jpg")
    os.chmod(photo, 0o444)
    data = photo.read_bytes()
    with pytest.raises(CaptionError, match="read-only") as err:
        writer.write(photo, "a cat")
    assert "\n" not in str(err.value)
    assert photo.read_bytes() == data and stat.S_IMODE(photo.stat().st_mode) == 0o444


@pytest.mark.parametrize("sidecar", [False, True])
def test_read_only_folder_is_refused(tmp_path: Path, sidecar: bool) -> None:
    folder = tmp_path / "album"
    folder.mkdir()
    photo = make_photo(folder, "webp")
    data = photo.read_bytes()
    os.chmod(folder, 0o555)
    try:
        with MetadataWriter(MetadataOptions(sidecar=sidecar)) as writer, \
                pytest.raises(CaptionError, match="read-only"):
            writer.write(photo, "a cat")
    finally:
        os.chmod(folder, 0o755)
    assert photo.read_bytes() == data
    assert sorted(p.name for p in folder.iterdir()) == ["photo.webp"]


def limited_exiftool(blocks: int, ignore_signal: bool) -> ExifTool:
    """ExifTool that may write files of only ``blocks`` KiB: with SIGXFSZ ignored a write fails as on a
    full disk (EFBIG); otherwise the kernel kills ExifTool in the middle of writing the file."""
    trap = 'trap "" XFSZ; ' if ignore_signal else ""
    script = f'{trap}ulimit -f {blocks}; exec exiftool "$@"'
    return ExifTool(command=["bash", "-c", script, "exiftool"])


def big_photo(folder: Path) -> Path:
    photo = folder / "big.jpg"
    array = np.random.default_rng(3).integers(0, 256, (600, 800, 3), dtype=np.uint8)
    Image.fromarray(array).save(photo, quality=95)  # about 1 MB of noise
    return photo


def test_full_disk_leaves_the_photo_and_no_temporary_file(tmp_path: Path) -> None:
    photo = big_photo(tmp_path)
    data = photo.read_bytes()
    with MetadataWriter(MetadataOptions(), exiftool=limited_exiftool(64, ignore_signal=True)) as writer, \
            pytest.raises(CaptionError) as err:
        writer.write(photo, "noise")
    assert "\n" not in str(err.value) and "left as it was" in str(err.value)
    assert photo.read_bytes() == data
    assert leftovers(tmp_path) == []


def test_exiftool_killed_while_writing(tmp_path: Path) -> None:
    photo = big_photo(tmp_path)
    data = photo.read_bytes()
    with MetadataWriter(MetadataOptions(), exiftool=limited_exiftool(64, ignore_signal=False)) as writer, \
            pytest.raises(ExifToolStopped, match="stopped unexpectedly"):
        writer.write(photo, "noise")
    assert photo.read_bytes() == data
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["keep_attributes", "replace_durably"])
@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_an_interruption_leaves_the_photo_old_and_no_temporary_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str, error: type[BaseException]) -> None:
    photo = make_photo(tmp_path, "jpg")
    data = photo.read_bytes()

    def interrupted(*args: object) -> None:
        raise error(28, "No space left on device") if error is OSError else error()

    monkeypatch.setattr(f"utils.metadata.alt_text.{where}", interrupted)
    with MetadataWriter(MetadataOptions()) as writer:
        expected = CaptionError if error is OSError else error
        with pytest.raises(expected):
            writer.write(photo, "a cat")
    assert photo.read_bytes() == data
    assert leftovers(tmp_path) == []


def test_ctrl_c_while_exiftool_works_kills_it_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    photo = make_photo(tmp_path, "jpg")
    data = photo.read_bytes()
    tool = ExifTool()
    real_read = tool._read_until
    seen: list[int | None] = []

    def ctrl_c(*args: object, **kwargs: object) -> str:
        # Ctrl-C reaches the whole process group: ExifTool and then this process.
        if tool.pid is not None:
            seen.append(tool.pid)
            os.kill(tool.pid, signal.SIGINT)
        raise KeyboardInterrupt

    with MetadataWriter(MetadataOptions(), exiftool=tool) as writer:
        writer.write(make_photo(tmp_path, "png"), "warm up")  # the process is running
        monkeypatch.setattr(tool, "_read_until", ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            writer.write(photo, "a cat")
        assert photo.read_bytes() == data
        assert leftovers(tmp_path) == []
        assert seen and tool.pid is None  # killed and forgotten
        monkeypatch.setattr(tool, "_read_until", real_read)
        assert writer.write(photo, "a cat").action == "written"  # a new process takes over


def test_a_dead_exiftool_is_replaced_between_photos(tmp_path: Path, writer: MetadataWriter) -> None:
    writer.write(make_photo(tmp_path, "jpg", "one.jpg"), "first")
    pid = writer._exiftool.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert writer.write(make_photo(tmp_path, "jpg", "two.jpg"), "second").action == "written"
    assert writer._exiftool.pid != pid


def test_an_exiftool_that_dies_gives_a_clean_error_not_a_hang(tmp_path: Path) -> None:
    with ExifTool(command=["bash", "-c", "echo 'Error: broken install' >&2; exit 3", "exiftool"]) as tool, \
            pytest.raises(ExifToolStopped, match=r"exit status 3"):
        tool.execute("-ver")


def test_an_exiftool_that_hangs_is_stopped_after_the_timeout(tmp_path: Path) -> None:
    with ExifTool(command=["bash", "-c", "exec sleep 60", "exiftool"], timeout=1) as tool:
        with pytest.raises(ExifToolStopped, match="did not answer"):
            tool.execute("-ver")
        assert tool.pid is None


def test_one_process_serves_the_whole_run(tmp_path: Path, writer: MetadataWriter) -> None:
    pids = set()
    for i in range(3):
        writer.write(make_photo(tmp_path, "webp", f"p{i}.webp"), f"photo {i}")
        pids.add(writer._exiftool.pid)
    assert len(pids) == 1
    writer.close()
    assert writer._exiftool.pid is None


def test_a_left_over_temporary_file_is_never_taken_for_a_photo(tmp_path: Path) -> None:
    photo = make_photo(tmp_path, "jpg")
    stale = tmp_path / f".photo.jpg{TEMP_MARKER}0badf00d"
    shutil.copy(photo, stale)
    assert is_temp_name(stale.name)
    assert [Path(item.name).name for item in expand_inputs([str(tmp_path)])] == ["photo.jpg"]


def test_a_linked_photo_is_written_where_it_lives(tmp_path: Path, writer: MetadataWriter) -> None:
    photo = make_photo(tmp_path, "jpg")
    link = tmp_path / "link.jpg"
    link.symlink_to(photo.name)
    assert writer.write(link, "through a link").target == link
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    assert link.is_symlink()
    assert read_json(photo)[XMP_DESC] == "through a link"


# --- hostile captions and names ---------------------------------------------------------------------


HOSTILE_CAPTIONS = [
    'a "quoted" \'cat\'',
    "first line\nsecond line",
    "-o /tmp/elsewhere.jpg",
    "-overwrite_original",
    "#[CSTR]\\n not an escape",
    "back\\slash\\n and $dollar @at",
    "  leading and trailing blanks  ",
    "un chat sur la table, été — 猫 🐈",
    "<b>tags</b> & entities &amp; ]]>",
    "42",
    "1.50",
    "-execute",
    "{ready1}",
    "tab\there\nLF",
    "\ncaption after a line break",
]
EXIF_ASCII = {"un chat sur la table, été — 猫 🐈": "un chat sur la table, ete - ? ?"}  # the others are ASCII


@pytest.mark.parametrize("caption", HOSTILE_CAPTIONS)
@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_strange_captions_are_written_verbatim(tmp_path: Path, writer: MetadataWriter, caption: str,
                                               ext: str) -> None:
    photo = make_photo(tmp_path, ext)
    writer.write(photo, caption)
    tags = read_json(photo)
    exif = EXIF_ASCII.get(caption, caption)
    assert all(tags[f] == (exif if f == EXIF_DESC else caption) for f in FIELDS[ext])
    check_with_pillow(photo, ext, caption, exif)
    assert sorted(p.name for p in tmp_path.iterdir()) == [photo.name]


def test_line_breaks_are_stored_as_lf(tmp_path: Path, writer: MetadataWriter) -> None:
    # XML reads CR LF and CR as LF, so that is what every reader of the XMP would see anyway.
    photo = make_photo(tmp_path, "jpg")
    writer.write(photo, "one\r\ntwo\rthree")
    assert all(read_json(photo)[f] == "one\ntwo\nthree" for f in ALL_FIELDS)
    check_with_pillow(photo, "jpg", "one\ntwo\nthree")


def test_a_very_long_caption_is_cut_only_where_iptc_must(tmp_path: Path, writer: MetadataWriter) -> None:
    photo = make_photo(tmp_path, "jpg")
    caption = "é" * 1500 + " a cat" * 200  # 4200 bytes of UTF-8: 2000 ends inside the é's, between bytes
    writer.write(photo, caption)
    tags = read_json(photo)
    assert tags[XMP_DESC] == tags[ALT] == caption
    assert tags[EXIF_DESC] == "e" * 1500 + " a cat" * 200
    assert tags[IPTC_CAP] == "é" * 1000
    check_with_pillow(photo, "jpg", caption, "e" * 1500 + " a cat" * 200)


@pytest.mark.parametrize("ext", ["jpg", "png", "tif", "webp"])
def test_exif_gets_ascii_and_xmp_and_iptc_the_whole_caption(tmp_path: Path, writer: MetadataWriter, ext: str) -> None:
    # EXIF (2.32 and earlier) types ImageDescription ASCII: UTF-8 there reads as "cafÃ©" in Pillow.
    photo = make_photo(tmp_path, ext)
    caption = "un café près de la fenêtre, Straße — œuf ½ 猫 🐈"
    writer.write(photo, caption)
    with Image.open(photo) as im:
        assert im.getexif()[0x010E] == 'un cafe pres de la fenetre, Strasse - oeuf 1/2 ? ?'
    tags = read_json(photo)
    assert tags[XMP_DESC] == tags[ALT] == caption
    assert tags[EXIF_DESC] == 'un cafe pres de la fenetre, Strasse - oeuf 1/2 ? ?'
    check_with_pillow(photo, ext, caption, 'un cafe pres de la fenetre, Strasse - oeuf 1/2 ? ?')
    if ext in ("jpg", "tif"):
        assert tags[IPTC_CAP] == caption


@pytest.mark.parametrize("caption", ["", "   \n", "bell\x07", "nul\x00"])
def test_captions_xmp_cannot_hold_are_refused(tmp_path: Path, writer: MetadataWriter, caption: str) -> None:
    photo = make_photo(tmp_path, "jpg")
    data = photo.read_bytes()
    with pytest.raises(CaptionError):
        writer.write(photo, caption)
    assert photo.read_bytes() == data


@pytest.mark.parametrize("name", ["my photo.jpg", "-o.jpg", "-overwrite_original.jpg", "ça été 猫.jpg",
                                  "two\nlines.jpg", " lead.jpg", "back\\slash.jpg", "#hash.jpg",
                                  "50%d %f.jpg", "$HOME @x.jpg", "trailing\r.jpg"])
@pytest.mark.parametrize("sidecar", [False, True])
def test_strange_file_names(tmp_path: Path, name: str, sidecar: bool) -> None:
    photo = make_photo(tmp_path, "jpg", name)
    before = pixels(photo)
    with MetadataWriter(MetadataOptions(sidecar=sidecar)) as writer:
        result = writer.write(photo, "a named cat")
    assert result.action == "written"
    assert result.target == (tmp_path / f"{name}.xmp" if sidecar else photo)
    assert read_json(result.target)[XMP_DESC] == "a named cat"
    assert pixels(photo) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name] + ([f"{name}.xmp"] if sidecar else []))


def test_a_name_exiftool_cannot_be_given_is_refused_cleanly(tmp_path: Path, writer: MetadataWriter) -> None:
    photo = make_photo(tmp_path, "jpg", "cost $5\nnow.jpg")
    data = photo.read_bytes()
    with pytest.raises(CaptionError, match="rename the file") as err:
        writer.write(photo, "a cat")
    assert photo.read_bytes() == data and leftovers(tmp_path) == []
    assert writer.write(make_photo(tmp_path, "png"), "the next photo").action == "written"
    assert "\n" not in str(err.value).replace("\\n", "")


def test_a_folder_with_percent_codes_is_refused_cleanly(tmp_path: Path, writer: MetadataWriter) -> None:
    folder = tmp_path / "100%d"
    folder.mkdir()
    photo = make_photo(folder, "jpg")
    data = photo.read_bytes()
    with pytest.raises(CaptionError, match="'%' codes"):
        writer.write(photo, "a cat")
    assert photo.read_bytes() == data


def test_a_relative_name_starting_with_a_dash(tmp_path: Path, writer: MetadataWriter,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    make_photo(tmp_path, "jpg", "-ver.jpg")
    monkeypatch.chdir(tmp_path)
    assert writer.write(Path("-ver.jpg"), "dash").target == Path("-ver.jpg")
    assert read_json(tmp_path / "-ver.jpg")[XMP_DESC] == "dash"


# --- the ExifTool check and the protocol ------------------------------------------------------------


def test_missing_exiftool_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CaptionError) as err:
        require_exiftool()
    message = str(err.value)
    assert "\n" not in message
    assert "apt-get install libimage-exiftool-perl" in message and "brew install exiftool" in message
    assert "exiftool.org" in message


def test_too_old_exiftool_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "exiftool"
    fake.write_text("#!/bin/sh\necho 10.80\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CaptionError, match=r"10\.80 is too old.*12\.33"):
        require_exiftool()
    assert exiftool_module.find_exiftool() == str(fake)


def test_version_and_argument_encoding() -> None:
    assert parse_version("12.57\n") == (12, 57)
    assert parse_version("13.10") > (12, 33)
    assert encode_arg("a\\n\nb\r") == "#[CSTR]a\\\\n\\nb\\r"
    assert encode_arg("/plain/$path@") == "/plain/$path@"
    for unsafe in ["", " lead", "#comment", "new\nline $x"]:
        with pytest.raises(CaptionError):
            encode_arg(unsafe)


def test_a_hard_linked_photo_is_written_with_a_warning(tmp_path: Path, writer: MetadataWriter,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    photo = make_photo(tmp_path, "jpg")
    other = tmp_path / "other-name.jpg"
    os.link(photo, other)
    with caplog.at_level("WARNING"):
        assert writer.write(photo, "linked").action == "written"
    assert "hard links" in caplog.text
    assert read_json(photo)[XMP_DESC] == "linked"
    assert XMP_DESC not in read_json(other)


@pytest.mark.parametrize("end", ["exit-without-close", "sigkill"])
def test_exiftool_never_outlives_the_program(tmp_path: Path, end: str) -> None:
    # ExifTool keeps polling its stdin after the end of file, so it must be ended for it.
    photo = make_photo(tmp_path, "jpg")
    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from utils.metadata import MetadataOptions, MetadataWriter\n"
        "w = MetadataWriter(MetadataOptions())\n"
        "w.write(Path(sys.argv[1]), 'a cat')\n"
        "print(w._exiftool.pid, flush=True)\n"
        "if sys.argv[2] == 'sigkill':\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code, str(photo), end], capture_output=True, text=True,
                          cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, timeout=60)
    pid = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.05)
    assert not alive(pid)


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie (an orphan is reaped by init, or by nobody in a container)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
