"""Bad dataset files for the reward and PPO scripts, and fuzzed parsers: one-sentence errors, nothing left behind.

Every bad file gives a UserError that names the file and the problem in one line; the real CLIs exit 2 with
one `error:` line, no traceback, and leave the output folder as it was. The parsers either parse (and their
invariants hold) or raise UserError, never another exception.
"""
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from conftest import ROOT, hh_row, oasst_rows, write_jsonl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhflab.data import _io, hh_rlhf, oasst1
from rlhflab.errors import UserError

GIB = 2**30
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- bad files, as a user might pass them

def _hh_rows():
    return [hh_row([f"question {i}?"], f"good answer {i}", f"bad answer {i}") for i in range(8)]


def _oasst_rows():
    return oasst_rows([f"Tell me about topic {i}." for i in range(8)])


def _write_bad(path: Path, kind: str, rows: list[dict], other_rows: list[dict]) -> tuple[Path, str]:
    """Write a bad file of the given kind; return it and a pattern its error message must match."""
    if kind == "csv":
        path.write_text("chosen,rejected,text,role\n\"Human: hi\",\"Human: ho\",hi,prompter\n")
        return path, r"is not valid JSON .*starts 'chosen,rejected"
    if kind == "png":
        path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
        return path, "is a PNG image, not JSON/JSONL text"
    if kind == "json_object":  # a pretty-printed object holding the rows, not the rows
        path.write_text(json.dumps({"data": rows}, indent=2))
        return path, r"holds one JSON object .*\(keys 'data'\) instead of rows"
    if kind == "list_of_strings":
        path.write_text(json.dumps([json.dumps(r) for r in rows]))
        return path, "item 1 of the JSON list .* is a string, not a JSON object"
    if kind == "wrong_columns":
        write_jsonl(path, other_rows)
        return path, "not in (hh-rlhf|oasst1) format"
    if kind == "empty":
        path.write_bytes(b"")
        return path, "is empty"
    if kind == "non_utf8":  # Latin-1, as a spreadsheet export might write it
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).replace("answer 3", "réponse 3")
        text = text.replace("topic 3", "café 3")
        path.write_bytes(text.encode("latin-1"))
        return path, r"line 4 of dataset file .* is not UTF-8 text \(byte 0xe9"
    raise ValueError(kind)


BAD_KINDS = ["csv", "png", "json_object", "list_of_strings", "wrong_columns", "empty", "non_utf8"]


def _assert_one_sentence(exc: UserError, path: Path, pattern: str):
    msg = str(exc)
    assert "\n" not in msg and str(path) in msg, msg
    assert re.search(pattern, msg), msg


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_hh_file_gives_one_sentence_naming_it(tmp_path, kind):
    path, pattern = _write_bad(tmp_path / "pairs.jsonl", kind, _hh_rows(), _oasst_rows())
    with pytest.raises(UserError) as info:
        hh_rlhf.preference_split(str(path), 0, dev_size=2, test_size=2)
    _assert_one_sentence(info.value, path, pattern)


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_oasst_file_gives_one_sentence_naming_it(tmp_path, kind):
    path, pattern = _write_bad(tmp_path / "prompts.jsonl", kind, _oasst_rows(), _hh_rows())
    with pytest.raises(UserError) as info:
        oasst1.load_prompts(str(path), lang="en")
    _assert_one_sentence(info.value, path, pattern)


def test_oasst_rows_with_other_roles_or_bad_text_say_what_was_seen(tmp_path):
    rows = _oasst_rows()
    for r in rows:
        r["role"] = "user"  # a chat export, not oasst1
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    with pytest.raises(UserError, match=r"no prompter messages .*role values seen: \['user'\]"):
        oasst1.load_prompts(str(path))
    rows = _oasst_rows()[:3]
    rows[0]["text"], rows[1]["text"], rows[2]["text"] = None, 42, ["a list"]
    path = write_jsonl(tmp_path / "bad_text.jsonl", rows)
    with pytest.raises(UserError, match="no prompter messages"):
        oasst1.load_prompts(str(path))  # was an AttributeError on the number / list


def test_other_bad_files_refused_clearly(tmp_path):
    cases = {
        "deep.json": (b"[" * 200_000, "nests JSON too deeply"),  # was a RecursionError
        "bigint.jsonl": (b'{"chosen": ' + b"9" * 5000 + b"}\n", "a number too long to convert"),  # was a ValueError
        "rows.jsonl": (b'{"chosen": "a"}\n[1, 2]\n', "line 2 of dataset file .* holds a list, not a JSON object"),
        "empty_list.json": (b"  []  ", "holds an empty JSON list"),
        "blank.jsonl": (b"\n  \n\r\n", "is empty"),
        "utf16.jsonl": ('{"chosen": "a"}\n'.encode("utf-16"), "is UTF-16 text"),
        "utf16le.jsonl": ('{"chosen": "a"}\n'.encode("utf-16-le"), "binary or UTF-16"),
        "broken.jsonl.gz": (b"\x1f\x8b\x08\x00\x00\x00\x00\x00garbage", "could not be read"),
    }
    for name, (data, pattern) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(UserError) as info:
            _io.read_records(path)
        _assert_one_sentence(info.value, path, pattern)
    with pytest.raises(UserError, match="is a folder"):
        _io.read_records(tmp_path)


def test_good_variants_still_read(tmp_path):
    import gzip

    rows = _hh_rows()
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows)
    (tmp_path / "bom_crlf.jsonl").write_bytes(b"\xef\xbb\xbf" + lines.encode())
    (tmp_path / "list.json").write_text(json.dumps(rows, indent=2))
    (tmp_path / "train.jsonl.gz").write_bytes(gzip.compress(lines.encode()))  # hh-rlhf's own file format
    for name in ("bom_crlf.jsonl", "list.json", "train.jsonl.gz"):
        assert _io.read_records(tmp_path / name) == rows, name
    # U+2028 is legal inside a JSON string; str.splitlines() used to cut the row in two there
    odd = _oasst_rows()[:1]
    odd[0]["text"] = "line one\u2028line two\x85end"
    path = tmp_path / "u2028.jsonl"
    path.write_text(json.dumps(odd[0], ensure_ascii=False) + "\n", encoding="utf-8")
    assert oasst1.load_prompts(str(path)) == ["line one\u2028line two\x85end"]


# ---------------------------------------------------------------- a 1 GiB single line

def _huge_line(path: Path, head: bytes) -> Path:
    """A 1 GiB file that is one unterminated JSON line: 20 MiB of real text, then a sparse tail (no disk)."""
    with path.open("wb") as f:
        f.write(head)
        chunk = b"a" * 2**20
        for _ in range(20):
            f.write(chunk)
        f.truncate(GIB)
    return path


@pytest.fixture(scope="module")
def huge_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("huge")
    return {"hh": _huge_line(tmp / "pairs.jsonl", b'{"chosen": "'),
            "oasst": _huge_line(tmp / "prompts.jsonl", b'{"role": "prompter", "text": "')}


@pytest.mark.parametrize("which", ["hh", "oasst"])
def test_one_gib_line_refused_before_it_is_read(huge_files, which):
    path = huge_files[which]
    assert path.stat().st_size == GIB
    load = (lambda: hh_rlhf.load_pairs(str(path))) if which == "hh" else (lambda: oasst1.load_prompts(str(path)))
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(UserError) as info:
            load()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    _assert_one_sentence(info.value, path, r"line 1 of dataset file .* is longer than the 16 MiB limit for one "
                                           r"record.*one record per line \(for a JSON list: `jq -c")
    assert peak < 3 * _io.MAX_LINE_BYTES, f"peak {peak / 2**20:.0f} MiB: the line was read whole"
    assert time.perf_counter() - t0 < 30


def test_one_gib_json_list_refused_by_size(tmp_path):
    path = _huge_line(tmp_path / "all.json", b'[{"chosen": "')
    with pytest.raises(UserError) as info:
        _io.read_records(path)
    _assert_one_sentence(info.value, path, r"one JSON document over the 256 MiB limit .*jq -c '\.\[\]'")


# ---------------------------------------------------------------- the real CLIs: exit 2, one line, nothing written

def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


# Runs the script as `python SCRIPT ARGS` would, and at exit writes the process's own peak RSS (VmHWM of the memory
# it mapped after exec). The kernel's ru_maxrss of a child also counts the parent's memory it was forked from, so it
# would measure the test process, which grows as the suite loads models.
_PEAK_RSS_LAUNCHER = """
import atexit, runpy, sys
peak_file = sys.argv.pop(1)
def _peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            open(peak_file, "w").write(str(int(line.split()[1]) * 1024))
atexit.register(_peak)
sys.argv = sys.argv[1:]
sys.path[0] = __import__("os").path.dirname(sys.argv[0])
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _run_cli(args: list[str], cwd: Path):
    """Run a training script; return (exit code, stderr, peak RSS in bytes) of that one child process."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    peak = cwd / "peak_rss.txt"
    with (cwd / "stdout.txt").open("wb") as out, (cwd / "stderr.txt").open("wb") as err:
        proc = subprocess.run([sys.executable, "-c", _PEAK_RSS_LAUNCHER, str(peak), *args], stdout=out, stderr=err,
                              env=env, cwd=cwd)
    return proc.returncode, (cwd / "stderr.txt").read_text(), int(peak.read_text())


def _assert_clean_failure(code, stderr, rss, bad: Path, pattern: str):
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines == errors, stderr  # nothing else on stderr: no warnings, no traceback
    assert str(bad) in errors[0] and re.search(pattern, errors[0]), errors[0]
    assert rss < 2 * GIB, f"peak RSS {rss / GIB:.2f} GiB"


@pytest.mark.parametrize("case", ["huge_line_new_dir", "png_existing_checkpoint"])
def test_reward_cli_bad_dataset_exits_2_and_writes_nothing(tmp_path, huge_files, case):
    store = tmp_path / "checkpoints"
    out = store / "reward"
    if case == "huge_line_new_dir":
        bad, pattern = huge_files["hh"], "16 MiB limit"
        store.mkdir()
    else:
        bad, pattern = _write_bad(tmp_path / "pairs.jsonl", "png", [], [])
        out.mkdir(parents=True)
        (out / "model.safetensors").write_bytes(b"previous weights")
        (out / "README.md").write_text("previous card")
    before = _tree(store)
    code, stderr, rss = _run_cli([str(ROOT / "training" / "reward.py"), "--profile", "demo", "--dataset", str(bad),
                                  "--output-dir", str(out)], tmp_path)
    _assert_clean_failure(code, stderr, rss, bad, pattern)
    assert _tree(store) == before  # no new checkpoint, no half-written one, no trainer state beside it
    assert out.exists() == (case != "huge_line_new_dir")


@pytest.mark.parametrize("case", ["json_object_new_dir", "non_utf8_existing_checkpoint"])
def test_ppo_cli_bad_dataset_exits_2_before_loading_models(tmp_path, tiny_llama_dir, tiny_reward_dir, case):
    store = tmp_path / "checkpoints"
    out = store / "ppo-full"
    kind = "json_object" if case == "json_object_new_dir" else "non_utf8"
    bad, pattern = _write_bad(tmp_path / "oasst.jsonl", kind, _oasst_rows(), [])
    if case == "json_object_new_dir":
        store.mkdir()
    else:
        out.mkdir(parents=True)
        (out / "model.safetensors").write_bytes(b"previous weights")
        (out / "metrics.jsonl").write_text('{"step": 1}\n')
    before = _tree(store)
    t0 = time.perf_counter()
    code, stderr, rss = _run_cli([str(ROOT / "training" / "ppo.py"), "--mode", "full", "--profile", "demo",
                                  "--dataset", str(bad), "--reward-model", str(tiny_reward_dir),
                                  "--base-model", str(tiny_llama_dir), "--output-dir", str(out)], tmp_path)
    _assert_clean_failure(code, stderr, rss, bad, pattern)
    assert _tree(store) == before
    assert out.exists() == (case != "json_object_new_dir")
    print(f"ppo CLI failed in {time.perf_counter() - t0:.1f} s")


# ---------------------------------------------------------------- fuzzing the parsers

_TOKENS = st.sampled_from(["\n\nHuman:", "\n\nAssistant:", "\n\nAssistant: ", " ", "\n", "hi", "Assistant:", ""])
transcripts = st.lists(_TOKENS | st.text(max_size=4), max_size=10).map("".join)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6)
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c,
                                                                                               max_size=3),
                           max_leaves=6)
hh_values = transcripts | json_values
well_formed_hh_rows = st.builds(hh_row, st.lists(st.text(max_size=5), min_size=1, max_size=3),
                                st.text(max_size=5), st.text(max_size=5))
any_hh_rows = st.dictionaries(st.sampled_from(["chosen", "rejected", "other"]), hh_values, max_size=3)
hh_rows_strategy = st.lists(any_hh_rows | well_formed_hh_rows, max_size=6)
oasst_row_strategy = st.fixed_dictionaries({}, optional={
    "text": st.text(max_size=8) | json_values, "role": st.sampled_from(["prompter", "assistant", None, 1]),
    "lang": st.sampled_from(["en", "de", None]), "deleted": json_scalars, "message_id": st.text(max_size=3)})
SKIP_REASONS = {"missing chosen/rejected", "not text", "no assistant turn", "prompts differ", "empty prompt",
                "empty response", "identical responses"}


@FUZZ
@given(transcripts)
def test_fuzz_split_transcript_reconstructs(transcript):
    hh_rlhf.transcript_to_messages(transcript)
    result = hh_rlhf.split_transcript(transcript)
    if hh_rlhf.ASSISTANT_TAG not in transcript:
        assert result is None
        return
    prompt, response = result
    assert prompt.endswith(hh_rlhf.ASSISTANT_TAG) and transcript.startswith(prompt)
    assert transcript[len(prompt):].strip() == response and hh_rlhf.ASSISTANT_TAG not in response


@FUZZ
@given(hh_values, hh_values)
def test_fuzz_parse_pair(chosen, rejected):
    pair, reason = hh_rlhf.parse_pair(chosen, rejected)
    if pair is None:
        assert reason in SKIP_REASONS
        return
    assert reason is None and pair.chosen and pair.rejected and pair.chosen != pair.rejected
    assert chosen == pair.prompt + chosen[len(pair.prompt):] and chosen[len(pair.prompt):].strip() == pair.chosen
    assert rejected[:len(pair.prompt)] == pair.prompt and rejected[len(pair.prompt):].strip() == pair.rejected
    assert pair.messages and pair.messages[-1]["role"] in ("user", "assistant")


def _check_hh_rows(rows):
    result = hh_rlhf.parse_rows(rows)
    assert len(result.pairs) + result.num_skipped == len(rows)
    assert set(result.skipped) <= SKIP_REASONS
    for pair in result.pairs:
        assert pair.prompt.endswith(hh_rlhf.ASSISTANT_TAG) and pair.chosen != pair.rejected


def _check_oasst_rows(rows, lang=None):
    try:
        texts = oasst1.prompter_texts(rows, lang)
    except UserError as exc:
        assert rows and not all(c in rows[0] for c in oasst1.REQUIRED_COLUMNS), exc
        return
    eligible = [r["text"].strip() for r in rows
                if r.get("role") == "prompter" and not r.get("deleted") and isinstance(r.get("text"), str)
                and (not lang or r.get("lang") == lang)]
    assert all(t and t == t.strip() and t in eligible for t in texts)
    keys = [" ".join(t.split()) for t in texts]
    assert len(set(keys)) == len(keys)  # de-duplicated
    assert set(keys) == {" ".join(t.split()) for t in eligible} - {""}  # and nothing eligible lost


@FUZZ
@given(hh_rows_strategy)
def test_fuzz_hh_parse_rows_counts_every_row(rows):
    _check_hh_rows(rows)


@FUZZ
@given(st.lists(oasst_row_strategy, max_size=6), st.sampled_from([None, "en"]))
def test_fuzz_oasst_prompter_texts(rows, lang):
    _check_oasst_rows(rows, lang)


def _splice(text: str, noise: bytes, at: int) -> bytes:
    data = text.encode("utf-8")
    at %= len(data) + 1
    return data[:at] + noise + data[at:]


_row_lists = st.lists(st.one_of(json_values, hh_rows_strategy.map(lambda r: r[0] if r else {}),
                                oasst_row_strategy), max_size=5)
_jsonl = _row_lists.map(lambda rows: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
file_bytes = st.one_of(
    st.binary(max_size=300),
    _jsonl.map(str.encode),
    _row_lists.map(lambda rows: json.dumps(rows, indent=1).encode()),
    st.builds(_splice, _jsonl, st.binary(min_size=1, max_size=6), st.integers(0, 10_000)),
    st.builds(lambda magic, rest: magic + rest,
              st.sampled_from([b"\x1f\x8b", b"\x1f\x8b\x08\x00", b"\xef\xbb\xbf", b"\xff\xfe", b"[", b"{", b"\x89PNG"]),
              st.binary(max_size=100)),
)


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "data.jsonl"


@FUZZ
@given(data=file_bytes)
def test_fuzz_read_records_on_arbitrary_bytes(fuzz_file, data):
    fuzz_file.write_bytes(data)
    try:
        rows = _io.read_records(fuzz_file)
    except UserError as exc:
        assert "\n" not in str(exc) and str(fuzz_file) in str(exc), str(exc)
        return
    assert rows and all(isinstance(r, dict) for r in rows)
    _check_hh_rows(rows)
    _check_oasst_rows(rows, "en")
    for load in (hh_rlhf.load_pairs, oasst1.load_prompts):
        try:
            load(str(fuzz_file))
        except UserError as exc:
            assert "\n" not in str(exc), str(exc)
