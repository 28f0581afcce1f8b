"""Reading local JSON/JSONL files and Hub datasets with one-sentence errors."""
from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

from rlhflab.errors import DatasetUnavailable, UserError

# Rows of hh-rlhf and oasst1 are a few KB; a longer "line" is a file in the wrong shape (a whole JSON
# list on one line, a binary file), so it is refused before it is read whole.
MAX_LINE_BYTES = 16 * 2**20
# A JSON list (not JSONL) is parsed in one piece and takes several times its size in memory.
MAX_DOCUMENT_BYTES = 256 * 2**20

_MAGIC = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
          (b"PK\x03\x04", "a zip archive"), (b"PAR1", "a Parquet file"), (b"%PDF", "a PDF document"),
          (b"\x93NUMPY", "a NumPy array"), (b"SQLite format 3\x00", "an SQLite database"),
          (b"\xff\xfe", "UTF-16 text"), (b"\xfe\xff", "UTF-16 text"))
_SPLIT_HINT = "convert it to JSONL, one record per line (for a JSON list: `jq -c '.[]' FILE > rows.jsonl`)"


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def is_local(source: str) -> bool:
    return Path(source).suffix.lower() in (".json", ".jsonl") or Path(source).exists()


def _open(path: Path, head: bytes):
    """Binary stream of the file's text; gzip (as hh-rlhf's own train.jsonl.gz files) is decompressed."""
    return gzip.open(path, "rb") if head.startswith(b"\x1f\x8b") else path.open("rb")


def _json_type(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _snippet(line: bytes) -> str:
    return repr(line[:40].decode("utf-8", errors="replace").strip())


def _decode(line: bytes, where: str) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{where} is not UTF-8 text (byte 0x{line[exc.start]:02x} at byte {exc.start + 1} of the "
                        f"line); re-save the file as UTF-8.") from None


def _parse(text: str, where: str, shown: bytes):
    try:
        return json.loads(text)
    except RecursionError:
        raise UserError(f"{where} nests JSON too deeply to read; rows must be flat JSON objects.") from None
    except ValueError as exc:  # JSONDecodeError, and e.g. integers too long to convert
        if isinstance(exc, json.JSONDecodeError):
            at = f"line {exc.lineno} column {exc.colno}" if exc.lineno > 1 else f"column {exc.colno}"
            detail = f"{exc.msg} at {at}"
        else:
            detail = "a number too long to convert"
        raise UserError(f"{where} is not valid JSON ({detail}; it starts {_snippet(shown)}); pass JSONL "
                        f"(one JSON object per line) or a JSON list of objects.") from None


def _read_document(f, path: Path, first: bytes) -> object:
    """The whole file as one JSON value, refused beyond MAX_DOCUMENT_BYTES before it is read whole."""
    too_big = path.stat().st_size > MAX_DOCUMENT_BYTES and not isinstance(f, gzip.GzipFile)
    data = b"" if too_big else f.read(MAX_DOCUMENT_BYTES + 1)
    if too_big or len(data) > MAX_DOCUMENT_BYTES:
        raise UserError(f"dataset file {path} is one JSON document over the {_mib(MAX_DOCUMENT_BYTES)} limit for "
                        f"reading in one piece; {_SPLIT_HINT.replace('FILE', str(path))}, which is read row by row.")
    text = _decode(data.removeprefix(b"\xef\xbb\xbf"), f"dataset file {path}")
    return _parse(text, f"dataset file {path}", first)


def _first_line_is_partial(f) -> bool:
    """True when line 1 starts a JSON value that does not end on it (a pretty-printed object); rewinds f."""
    line = f.readline(MAX_LINE_BYTES + 1).removeprefix(b"\xef\xbb\xbf")
    f.seek(0)
    if len(line) > MAX_LINE_BYTES:  # the line reader refuses it with the limit in the message
        return False
    try:
        json.loads(line.decode("utf-8"))
    except json.JSONDecodeError as exc:
        return exc.pos >= len(line.rstrip())  # ran out of text, rather than met a bad character
    except (ValueError, RecursionError):  # bad UTF-8 or other trouble: the line reader names it
        return False
    return False


def _read_lines(f, path: Path) -> list[dict]:
    rows = []
    lineno = 0
    while True:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return rows
        lineno += 1
        if len(raw) > MAX_LINE_BYTES:
            raise UserError(f"line {lineno} of dataset file {path} is longer than the {_mib(MAX_LINE_BYTES)} limit "
                            f"for one record (hh-rlhf and oasst1 rows are a few KB); if it holds many records, "
                            f"{_SPLIT_HINT.replace('FILE', str(path))}.")
        if lineno == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        where = f"line {lineno} of dataset file {path}"
        text = _decode(raw, where)
        if not text.strip():
            continue
        row = _parse(text.rstrip("\r\n"), where, raw)
        if not isinstance(row, dict):
            raise UserError(f"{where} holds {_json_type(row)}, not a JSON object; every line must be one "
                            f"record such as {{\"chosen\": ..., \"rejected\": ...}}.")
        rows.append(row)


def read_records(path: str | Path) -> list[dict]:
    """Rows of a JSONL file (one object a line) or a JSON file holding a list of objects (either may be gzipped).

    JSONL is read line by line: a line over MAX_LINE_BYTES, a JSON list over MAX_DOCUMENT_BYTES, a binary
    file, non-UTF-8 bytes or anything but objects is a UserError naming the file, before it is read whole.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"dataset {path} is a folder; pass a JSON/JSONL file with --dataset.")
    if not path.is_file():
        raise UserError(f"dataset file {path} does not exist; pass an existing JSON/JSONL file with --dataset.")
    try:
        with path.open("rb") as f:
            head = f.read(8192)
        for magic, kind in _MAGIC:
            if head.startswith(magic):
                raise UserError(f"dataset file {path} is {kind}, not JSON/JSONL text; pass the rows as a UTF-8 JSONL "
                                f"file (one JSON object per line).")
        with _open(path, head) as f:
            first = f.read(8192)
            if b"\x00" in first:
                raise UserError(f"dataset file {path} is binary or UTF-16 (it holds NUL bytes), not UTF-8 JSON/JSONL "
                                f"text; pass the rows as a UTF-8 JSONL file (one JSON object per line).")
            start = first.removeprefix(b"\xef\xbb\xbf").lstrip()
            f.seek(0)
            if start.startswith(b"["):
                rows = _read_document(f, path, first)
                if not rows:
                    raise UserError(f"dataset file {path} holds an empty JSON list; it has no rows.")
                for i, row in enumerate(rows):
                    if not isinstance(row, dict):
                        raise UserError(f"item {i + 1} of the JSON list in dataset file {path} is {_json_type(row)}, "
                                        f"not a JSON object (a row).")
                return rows
            if start.startswith(b"{") and _first_line_is_partial(f):
                whole = _read_document(f, path, first)  # one pretty-printed object, or a broken file
                raise UserError(f"dataset file {path} holds one JSON object spread over several lines "
                                f"(keys {', '.join(map(repr, list(whole)[:5]))}) instead of rows; write one JSON "
                                f"object per line (JSONL) or a JSON list of objects.")
            rows = _read_lines(f, path)
    except (OSError, EOFError, zlib.error) as exc:  # unreadable file, truncated or corrupt gzip
        raise UserError(f"dataset file {path} could not be read ({type(exc).__name__}: {exc}); check the file, "
                        f"or decompress it and pass the JSONL.") from None
    if not rows:
        raise UserError(f"dataset file {path} is empty (no JSON rows); it needs one JSON object per line.")
    return rows


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """A quick connect to the Hub (instead of the libraries' minute of retries when there is no network)."""
    import os
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def load_hub_rows(repo_id: str, split: str) -> list[dict]:
    """Rows of a Hub dataset split (offline: from the local datasets cache); else a DatasetUnavailable."""
    import os

    if not hub_reachable():
        os.environ["HF_HUB_OFFLINE"] = "1"  # let a cached copy load without retries
        os.environ["HF_DATASETS_OFFLINE"] = "1"
    try:
        import datasets

        return list(datasets.load_dataset(repo_id, split=split))
    except Exception as exc:  # the datasets library raises many types for "unreachable"
        raise DatasetUnavailable(
            f"the dataset {repo_id!r} could not be reached ({type(exc).__name__}); without network use "
            f"--profile demo, or pass --dataset a local JSON/JSONL file in the same format."
        ) from None
