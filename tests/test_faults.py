"""Faults a batch job meets on a shared server: SIGTERM / Ctrl-C, two jobs on one work dir, leftover temporary
files, a full disk, unreadable input, hostile bundles; each provoked for real through the command."""

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from car_onnx.core.files import remove_stale_temps
from car_onnx.jobs import lock
from car_onnx_export import tiny


def command(*args):
    code = "import sys; from car_onnx.cli import main; sys.argv = ['car-onnx', *sys.argv[1:]]; main()"
    return [sys.executable, "-c", code, *map(str, args)]


def wait_for_chunks(proc, work, count, timeout=120):
    deadline = time.monotonic() + timeout
    while len(list((work / "chunks").glob("*.npz"))) < count:
        assert proc.poll() is None, "the run ended before it could be stopped"
        assert time.monotonic() < deadline
        time.sleep(0.005)


def chunk_files(work):
    return len(list((work / "chunks").glob("*.npz")))


# --- 1. SIGTERM / Ctrl-C: an orderly stop, finished chunks kept, no temporary file, how to resume -------------


@pytest.mark.parametrize("sig, code, name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "SIGINT")])
def test_signal_stops_cleanly_and_the_job_resumes(data, tmp_path, cli, sig, code, name):
    root, bundle, path = data
    work, out = tmp_path / "work", tmp_path / "out" / "sel.jsonl"
    out.parent.mkdir()
    # Ctrl-C's default action, whatever the suite inherited (a shell's background job ignores SIGINT)
    proc = subprocess.Popen(
        command("select", path, "-o", out, "-b", bundle, *data.args, "--work-dir", work),
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    wait_for_chunks(proc, work, 5)
    sent = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 5, "the job took more than 5 s to stop"
    assert proc.returncode == code, err
    assert err.splitlines()[-1] == (
        f"car-onnx: interrupted ({name}); finished chunks are kept in {work}: run the same command again to resume"
    )
    finished = chunk_files(work)
    assert 5 <= finished < 120
    assert os.listdir(out.parent) == []  # no output, no temporary file beside it
    assert not list((work / "chunks").glob(".*.tmp"))

    rc, _, err, _ = cli("select", path, "-o", out, "-b", bundle, *data.args, "--work-dir", work)
    assert rc == 0 and f"reused {finished} finished chunk(s)" in err, err
    assert out.read_bytes() == (root / "plain.jsonl").read_bytes()


def test_sigterm_with_a_temporary_work_dir_says_the_work_was_discarded(data, tmp_path):
    _, bundle, path = data
    temp = tmp_path / "tmp"
    temp.mkdir()
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        command("score", path, "-o", out, "-b", bundle, "--chunk-records", "50"),
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(temp)},
    )
    deadline = time.monotonic() + 120
    while not list(temp.glob("car-onnx-*/chunks/*.npz")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert err.splitlines()[-1] == (
        "car-onnx: interrupted (SIGTERM); the work was discarded (it was in a temporary "
        "work dir): pass --work-dir DIR to keep finished chunks and resume"
    )
    assert not list(temp.glob("car-onnx-*")) and sorted(os.listdir(tmp_path)) == ["tmp"]  # (a library leaves .ses)


# --- 3. two jobs on one work dir ---------------------------------------------------------------------------------


def refusal(work, pid):
    return (
        f"car-onnx: error: {work}: --work-dir is in use by another car-onnx job (pid {pid}); wait for it to "
        "finish or choose another directory"
    )


def test_a_second_job_on_a_work_dir_is_refused_at_once_and_a_killed_ones_lock_is_taken_over(data, tmp_path, cli):
    root, bundle, path = data
    work = tmp_path / "work"
    first = subprocess.Popen(
        command("select", path, "-o", tmp_path / "a.jsonl", "-b", bundle, *data.args, "--work-dir", work, "-q"),
        stderr=subprocess.PIPE,
    )
    wait_for_chunks(first, work, 2)
    start = time.monotonic()
    rc, _, err, _ = cli("select", path, "-o", tmp_path / "b.jsonl", "-b", bundle, *data.args, "--work-dir", work)
    assert rc == 2 and err == refusal(work, first.pid)
    assert time.monotonic() - start < 15  # refused before reading the input (the time is Python's start-up)
    assert not (tmp_path / "b.jsonl").exists() and first.poll() is None

    first.send_signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    assert (work / ".lock").read_text() == f"{first.pid}\n"  # the stale lock file is still there
    rc, _, err, _ = cli("select", path, "-o", tmp_path / "b.jsonl", "-b", bundle, *data.args, "--work-dir", work)
    assert rc == 0 and "reused" in err, err
    assert (tmp_path / "b.jsonl").read_bytes() == (root / "plain.jsonl").read_bytes()


def test_the_lock_names_its_holder_and_is_released_on_any_exit(data, tmp_path, cli):
    _, bundle, path = data
    work = tmp_path / "work"
    with lock.held(work):
        rc, _, err, _ = cli("score", path, "-o", tmp_path / "o.jsonl", "-b", bundle, "--work-dir", work)
        assert rc == 2 and err == refusal(work, os.getpid())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": 3}\n')
    rc, _, err, _ = cli("score", bad, "-o", tmp_path / "o.jsonl", "-b", bundle, "--work-dir", work, "-q")
    assert rc == 1 and err == f"car-onnx: error: {bad}: line 1: field 'output': expected a string, got number"
    with lock.held(work):  # a failed job released it
        pass
    rc, _, err, _ = cli("score", path, "-o", tmp_path / "o.jsonl", "-b", bundle, "--work-dir", work, "-q")
    assert rc == 0, err  # the work dir holding only the lock file is accepted


# --- 4. a leftover hidden temporary output --------------------------------------------------------------------


def test_leftover_temporary_outputs_are_removed_and_live_ones_kept(data, tmp_path, cli):
    root, bundle, path = data
    out = tmp_path / "sel.jsonl"
    stale = [tmp_path / ".sel.jsonl.0123456789ab.tmp", tmp_path / ".sel.jsonl.0123456789ab.tmp.0"]
    others = [tmp_path / ".sel.jsonl.notahexname.tmp", tmp_path / ".other.jsonl.0123456789ab.tmp"]
    live = tmp_path / ".sel.jsonl.aaaaaaaaaaaa.tmp"
    for p in stale + others + [live]:
        p.write_text('{"id": -1}\n')
    with open(live) as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # as a running job's writer holds its file
        rc, _, err, _ = cli("select", path, "-o", out, "-b", bundle, *data.args)
    assert rc == 0, err
    assert out.read_bytes() == (root / "plain.jsonl").read_bytes()
    for p in stale:
        assert f"car-onnx: warning: {p}: removed, a temporary file left by an interrupted run" in err.splitlines()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in [out, live, *others])


def test_a_writer_holds_its_temporary_file_until_it_is_renamed(tmp_path):
    from car_onnx.io.writers import open_writer

    out = tmp_path / "o.jsonl"
    with open_writer(out, "jsonl") as writer:
        writer.write({"a": 1})
        assert remove_stale_temps(out) == [] and len(os.listdir(tmp_path)) == 1
    assert os.listdir(tmp_path) == ["o.jsonl"] and out.read_text() == '{"a": 1}\n'


# --- 2. disk full ----------------------------------------------------------------------------------------------


class SmallDisk:
    """A directory on a tmpfs of `size` bytes where the test may mount one (root with CAP_SYS_ADMIN); else a
    file size limit (RLIMIT_FSIZE) of `fsize` bytes on the job, the nearest fault an unprivileged test can cause."""

    def __init__(self, where, size, fsize):
        self.where, self.fsize = where, fsize
        where.mkdir()
        mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
        self.mounted = mount.returncode == 0
        self.error = "No space left on device" if self.mounted else "File too large"

    def limit(self):
        import resource

        if not self.mounted:
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.fsize, self.fsize))

    def run(self, *args):
        p = subprocess.run(command(*args), capture_output=True, text=True, preexec_fn=self.limit)
        return p.returncode, p.stderr

    def grow(self):
        """Give the job space: a larger tmpfs, or no limit."""
        if self.mounted:
            subprocess.run(["mount", "-o", "remount,size=64m", str(self.where)], check=True)
        self.fsize = None
        self.limit = lambda: None

    def close(self):
        if self.mounted:
            subprocess.run(["umount", str(self.where)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    disks = []

    def make(name, size, fsize):
        disks.append(SmallDisk(tmp_path / name, size, fsize))
        return disks[-1]

    yield make
    for disk in disks:
        disk.close()


def test_disk_full_writing_the_output(data, tmp_path, small_disk, cli):
    _, bundle, path = data
    rc, _, err, _ = cli("score", path, "-o", tmp_path / "plain.jsonl", "-b", bundle, "--chunk-records", "50", "-q")
    assert rc == 0, err
    assert (tmp_path / "plain.jsonl").stat().st_size > 256 << 10
    disk = small_disk("out", 128 << 10, 128 << 10)
    out, work = disk.where / "scores.jsonl", tmp_path / "work"
    rc, err = disk.run("score", path, "-o", out, "-b", bundle, "--chunk-records", "50", "--work-dir", work)
    assert rc == 1 and err.splitlines()[-1] == f"car-onnx: error: {out}: cannot write: {disk.error}", err
    assert os.listdir(disk.where) == []  # no partial output, no temporary file
    disk.grow()
    rc, err = disk.run("score", path, "-o", out, "-b", bundle, "--chunk-records", "50", "--work-dir", work)
    assert rc == 0 and "reused 120 finished chunk(s)" in err, err
    assert out.read_bytes() == (tmp_path / "plain.jsonl").read_bytes()


def test_disk_full_in_the_work_dir(data, tmp_path, small_disk):
    """On a small tmpfs the chunks fill it; under a file size limit the memory-mapped embeddings file is refused
    (its space is reserved up front, so a full disk is an error and not a SIGBUS)."""
    root, bundle, path = data
    disk = small_disk("work", 64 << 10, 64 << 10)
    out, work = tmp_path / "sel.jsonl", disk.where / "job"
    rc, err = disk.run("select", path, "-o", out, "-b", bundle, *data.args, "--work-dir", work)
    last = err.splitlines()[-1]
    assert rc == 1 and last.startswith(f"car-onnx: error: {work}/"), err
    assert last.endswith(f": cannot write: {disk.error}")
    name = last.split(f"{work}/")[1].split(":")[0]
    if disk.mounted:
        assert re.fullmatch(r"chunks/\d{6}\.npz", name), name
    else:
        assert name == "embeddings.npy"
    assert sorted(os.listdir(tmp_path)) == ["work"] and not list((work / "chunks").glob(".*"))
    disk.grow()
    rc, err = disk.run("select", path, "-o", out, "-b", bundle, *data.args, "--work-dir", work)
    assert rc == 0 and "reused" in err, err
    assert out.read_bytes() == (root / "plain.jsonl").read_bytes()


def test_embeddings_file_larger_than_the_space_left_is_an_error_not_a_crash(data, tmp_path, small_disk):
    """Every chunk fits, the [n, dim] embeddings file does not: reserved up front, the job fails with one line."""
    root, bundle, path = data
    disk = small_disk("work", 560 << 10, 128 << 10)
    out, work = tmp_path / "sel.jsonl", disk.where / "job"
    rc, err = disk.run("select", path, "-o", out, "-b", bundle, *data.args, "--work-dir", work)
    assert (
        rc == 1 and err.splitlines()[-1] == f"car-onnx: error: {work / 'embeddings.npy'}: cannot write: {disk.error}"
    ), err
    assert len(list((work / "chunks").glob("*.npz"))) == 120
    disk.grow()
    rc, err = disk.run("select", path, "-o", out, "-b", bundle, *data.args, "--work-dir", work)
    assert rc == 0 and "reused 120 finished chunk(s)" in err, err
    assert out.read_bytes() == (root / "plain.jsonl").read_bytes()


# --- 8. memory limit ------------------------------------------------------------------------------------------


def limited_select(data, out, limit, tmp):
    """`select` of the shared job in a subprocess under RLIMIT_AS = limit bytes (None: none), its temporary files
    in tmp; the process prints its VmPeak (bytes) last on stderr when it ends through Python's exit."""
    code = (
        "import atexit, sys\nfrom car_onnx.cli import main\n"
        "atexit.register(lambda: print(1024 * int(next(l.split()[1] for l in open('/proc/self/status') "
        "if l.startswith('VmPeak:'))), file=sys.stderr))\n"
        "sys.argv = ['car-onnx', *sys.argv[1:]]\nmain()\n"
    )

    def rlimit():
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    tmp.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-c", code, "select", data.path, "-o", out, "-b", data.bundle, *data.args, "-q"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TMPDIR": str(tmp)},
        preexec_fn=rlimit if limit else None,
    )


@pytest.mark.slow  # ~30 s: three runs
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="VmPeak is read from /proc")
def test_a_memory_limit_above_the_peak_completes_and_one_below_fails_with_one_line(data, tmp_path):
    """Under `ulimit -v` at 1.5x its measured peak the job writes the same bytes; below what it needs it fails
    with one line, exit 1, and leaves no file behind (failures in the middle of a larger job: README)."""
    free = limited_select(data, tmp_path / "free.jsonl", None, tmp_path / "tmp")
    assert free.returncode == 0, free.stderr
    peak = int(free.stderr.split()[-1])
    limited = limited_select(data, tmp_path / "limited.jsonl", int(1.5 * peak), tmp_path / "tmp")
    assert limited.returncode == 0, limited.stderr
    assert (
        (tmp_path / "limited.jsonl").read_bytes()
        == (tmp_path / "free.jsonl").read_bytes()
        == (data.root / "plain.jsonl").read_bytes()
    )
    limit = peak // 2  # below its needs: a run's virtual peak varies by a thread's malloc arena (64 MB) or more
    out = tmp_path / "low" / "o.jsonl"
    out.parent.mkdir()
    p = limited_select(data, out, limit, tmp_path / "tmp")
    assert (p.returncode, p.stderr) == (
        1,
        f"car-onnx: error: out of memory within the address-space limit of "
        f"{limit / 2**20:,.0f} MB (ulimit -v); give the job more memory or lower "
        "--max-tokens / --chunk-records\n",
    )
    assert os.listdir(out.parent) == []  # no output, no temporary file beside it
    assert set(os.listdir(tmp_path / "tmp")) <= {".ses"}  # no work dir left (.ses is onnxruntime's own)


# --- 7. hostile bundles ----------------------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from car_onnx.errors import BundleError  # noqa: E402
from car_onnx.runtime.manifest import verify_bundle  # noqa: E402

PATHS = [
    "../outside.onnx",
    "/etc/passwd",
    "joint/../../x",
    "a\x00b",
    "x" * 5000,
    "ünï/cødé.onnx",
    "",
    "link/model.fp32.onnx",
    "joint/tokenizer.json",
    "joint/model.fp32.onnx",
    "joint",
    ".",
    "manifest.json",
]
HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**64, -1, 0, 10**30, 2**31]),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(PATHS),
    st.sampled_from(["{output:>999999999}", "{instruction.__class__}", "{0}", "{", "}{", "{input!r}"]),
    st.lists(st.one_of(st.integers(), st.text(max_size=5)), max_size=3),
    st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=5)), max_size=3),
)


def mutate(draw, node):
    """`node` with one value somewhere inside replaced by a hostile one, or a key removed or added."""
    if isinstance(node, (dict, list)) and node and draw(st.integers(0, 3)):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = draw(st.sampled_from(keys))
        action = draw(st.sampled_from(["descend", "descend", "delete", "add"]))
        copy = dict(node) if isinstance(node, dict) else list(node)
        if action == "descend":
            copy[key] = mutate(draw, node[key])
        elif action == "delete":
            del copy[key]
        elif isinstance(copy, dict):
            copy[draw(st.sampled_from(PATHS + ["extra", "sha256"]))] = draw(HOSTILE)
        else:
            copy.append(draw(HOSTILE))
        return copy
    return draw(HOSTILE)


@pytest.fixture(scope="module")
def hostile_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    bundle = tiny.make_bundle(root / "bundle")
    (root / "outside").mkdir()
    (root / "outside" / "model.fp32.onnx").write_bytes((bundle / "joint" / "model.fp32.onnx").read_bytes())
    (bundle / "link").symlink_to(root / "outside")  # a symlink inside the bundle leading out of it
    return bundle, json.loads((bundle / "manifest.json").read_text())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_hostile_manifests_give_one_line_bundle_errors(hostile_bundle, data):
    import car_onnx

    bundle, good = hostile_bundle
    manifest = mutate(data.draw, good)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    try:
        verify_bundle(bundle)
        scores = car_onnx.load(bundle, threads=1).score([{"instruction": "explain water", "output": "it is wet"}])
        assert scores.shape == (1,)
    except BundleError as err:
        assert "\n" not in str(err) and len(str(err)) < 1000, str(err)
    finally:
        (bundle / "manifest.json").write_text(json.dumps(good))


@pytest.mark.parametrize(
    "rel, message",
    [
        ("../outside.onnx", "file path '../outside.onnx' leaves the bundle directory"),
        ("/etc/passwd", "file path '/etc/passwd' leaves the bundle directory"),
        ("link/model.fp32.onnx", "file path 'link/model.fp32.onnx' leaves the bundle directory"),
        ("a\x00b", "file path 'a\\x00b' is not a usable path (embedded null byte)"),
    ],
)
def test_paths_leaving_the_bundle_are_refused(hostile_bundle, rel, message):
    bundle, good = hostile_bundle
    manifest = json.loads(json.dumps(good))
    manifest["models"][0]["variants"]["fp32"]["graph"] = rel
    manifest["files"][rel] = good["files"]["joint/model.fp32.onnx"]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    try:
        with pytest.raises(BundleError) as err:
            verify_bundle(bundle)
        assert str(err.value) == f"{bundle / 'manifest.json'}: {message}"
    finally:
        (bundle / "manifest.json").write_text(json.dumps(good))


def test_hostile_values_are_named(hostile_bundle):
    bundle, good = hostile_bundle
    cases = [
        (
            ("max_length",),
            10**30,
            "models[0].max_length must be an integer from 2 to 1048576, got 1000000000000000000000000000000",
        ),
        (("pad_id",), "0", "models[0].pad_id must be a token id (integer >= 0), got '0'"),
        (
            ("template", "with_input"),
            "{output:>999999999}",
            "template.with_input '{output:>999999999}' may "
            "only hold {instruction}, {input} and {output}, without conversions or format specs",
        ),
    ]
    for keys, value, message in cases:
        manifest = json.loads(json.dumps(good))
        node = manifest["models"][0]
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
        (bundle / "manifest.json").write_text(json.dumps(manifest))
        try:
            with pytest.raises(BundleError) as err:
                verify_bundle(bundle)
            assert str(err.value) in (f"{bundle / 'manifest.json'}: {message}", message)
        finally:
            (bundle / "manifest.json").write_text(json.dumps(good))


def test_verify_checks_every_file_and_names_the_wrong_ones(tmp_path, cli):
    bundle = tiny.make_bundle(tmp_path / "b", precisions=("fp32", "int8"))
    rc, out, err, _ = cli("verify", bundle)
    assert rc == 0 and out == f"{bundle}: all 3 files match the manifest's sha256\n", err
    graph = bundle / "joint" / "model.int8.onnx"  # a file a default CPU run on fp32 would never load
    graph.write_bytes(graph.read_bytes()[:-1] + b"\x00")
    (bundle / "joint" / "tokenizer.json").unlink()
    rc, out, err, _ = cli("verify", bundle)
    assert rc == 1 and err == (
        f"car-onnx: error: {bundle}: 2 of 3 file(s) do not match the manifest: "
        "'joint/tokenizer.json' (missing), 'joint/model.int8.onnx' (sha256 mismatch: "
        "modified or corrupted); re-export or re-copy the bundle"
    )


# --- 6. a giant field ------------------------------------------------------------------------------------------


def tokenizers_to_test(tmp_path_factory):
    from car_onnx.runtime.bundle import default_bundle_dir

    found = [(tiny.make_bundle(tmp_path_factory.mktemp("clip") / "b") / "joint" / "tokenizer.json", 12)]
    default = default_bundle_dir() / "manifest.json"
    if default.is_file():  # the real WordPiece tokenizer, where the default bundle is built
        spec = json.loads(default.read_text())["models"][0]
        found.append((default.parent / spec["tokenizer"], spec["max_length"]))
    return found


@pytest.fixture(scope="module")
def clippers(tmp_path_factory):
    from car_onnx.runtime.tokenization import Clipper, load_tokenizer

    return [
        (load_tokenizer(path, n), Clipper(load_tokenizer(path, n), n))
        for path, n in tokenizers_to_test(tmp_path_factory)
    ]


PIECES = [
    *tiny.WORDS,
    "water",
    "überzeugend",
    "東京",
    "naïve",
    "e\u0301",
    "!",
    "...",
    "##",
    "[CLS]",
    "\x00",
    "\u200b",
    "a" * 300,
    "-",
    "'s",
    "1234567",
    "🙂",
    "\t",
    "\n",
    "  ",
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.sampled_from(PIECES), min_size=1, max_size=4000),
    st.lists(st.sampled_from([" ", "", "\n"]), min_size=1, max_size=4000),
)
def test_a_cut_text_gives_the_same_tokens(clippers, pieces, gaps):
    text = "".join(p + gaps[i % len(gaps)] for i, p in enumerate(pieces))
    for tokenizer, clip in clippers:
        assert tokenizer.encode(clip(text)).ids == tokenizer.encode(text).ids


def test_long_texts_are_cut_and_score_the_same(clippers, data):
    """The cut happens (else the test above proves nothing), and scores through the model are unchanged."""
    import car_onnx

    rng = np.random.default_rng(1)
    for tokenizer, clip in clippers:
        text = " ".join(rng.choice(PIECES[:40], 20 * clip.start))
        assert len(clip(text)) < len(text) / 4
        assert tokenizer.encode(clip(text)).ids == tokenizer.encode(text).ids
    _, bundle, _ = data
    model = car_onnx.load(bundle, threads=1)
    rows = [{"instruction": "explain", "output": " ".join(rng.choice(tiny.WORDS, n))} for n in (3, 50, 5000, 20000)]
    cut = model.score(rows)
    with pytest.MonkeyPatch.context() as mp:
        from car_onnx.runtime.tokenization import Clipper

        mp.setattr(Clipper, "__call__", lambda self, text: text)
        whole = car_onnx.load(bundle, threads=1).score(rows)
    assert cut.tobytes() == whole.tobytes()


@pytest.mark.slow
def test_a_200_mb_field_is_scored_in_bounded_memory(tmp_path, cli, rows_of):
    """Without the cut this run was OOM-killed at 18 GB resident (40M tokens); with it, ~1.3 GB: a few copies of
    the record itself (line, parsed string, template text, output row)."""
    bundle = tiny.make_bundle(tmp_path / "b")
    giant = "the a an of" + " water" * (200_000_000 // 6)
    rows = [
        {"instruction": "explain water", "output": "it is wet", "id": 0},
        {"instruction": "long", "output": giant, "id": 1},
        {"instruction": "a b", "output": "c d e", "id": 2},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = (
        "import resource, sys\nfrom car_onnx.cli import main\nsys.argv = ['car-onnx', *sys.argv[1:]]\n"
        "try:\n    main()\nfinally:\n    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, "score", str(path), "-o", str(tmp_path / "o.jsonl"), "-b", str(bundle), "-q"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr
    peak_mb = int(p.stderr.split()[-1]) / 1024
    assert peak_mb < 2500, f"peak {peak_mb:.0f} MB"
    got = [r["score"] for r in rows_of(tmp_path / "o.jsonl", "jsonl")]
    del giant
    (tmp_path / "o.jsonl").unlink()

    rows[1]["output"] = rows[1]["output"][:10_000]  # the same first max_length tokens
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, _, err, _ = cli("score", path, "-o", tmp_path / "short.jsonl", "-b", bundle, "-q")
    assert rc == 0, err
    want = [r["score"] for r in rows_of(tmp_path / "short.jsonl", "jsonl")]
    # the giant record is a chunk of its own (CHUNK_CHARS), so the others' batches differ: last float bits may
    np.testing.assert_allclose(got, want, rtol=1e-6)


# --- 5. output directory missing or read-only, input unreadable ------------------------------------------------


def unprivileged():
    """The prefix that runs a command as nobody where the tests run as root (root reads and writes anything), or
    None where that is impossible here."""
    import shutil

    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if (
        shutil.which("setpriv")
        and subprocess.run([*prefix, sys.executable, "-c", "import car_onnx"], capture_output=True, cwd="/").returncode
        == 0
    ):
        return prefix
    return None


@pytest.fixture
def perm_root():
    """A directory nobody can reach (tmp_path is root's alone), with a tiny bundle and two one-record inputs."""
    import shutil
    import tempfile

    root = os.path.realpath(tempfile.mkdtemp(prefix="car-onnx-perm-"))
    bundle = tiny.make_bundle(f"{root}/bundle")
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chmod(os.path.join(dirpath, name), 0o755 if name in dirs else 0o644)
    for name in ("good.jsonl", "secret.jsonl"):
        with open(f"{root}/{name}", "w") as f:
            f.write(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    os.chmod(f"{root}/secret.jsonl", 0o000)
    os.mkdir(f"{root}/ro", 0o555)
    os.chmod(root, 0o777)
    temp = tempfile.mkdtemp(prefix="car-onnx-temp-")  # onnxruntime keeps a telemetry id (.ses) in HOME/TMPDIR
    os.chmod(temp, 0o777)
    yield root, bundle, {**os.environ, "TMPDIR": temp, "HOME": temp}
    shutil.rmtree(root)
    shutil.rmtree(temp)


def check_refused(root, bundle, env, cases, prefix=()):
    for (inp, out), code, message in cases:
        p = subprocess.run(
            [*prefix, *command("select", inp, "-o", out, "-b", bundle, "--work-dir", f"{root}/work")],
            text=True,
            capture_output=True,
            cwd=root,
            env=env,
        )
        if message.startswith("Usage:"):  # refused by the command line parser itself
            assert p.returncode == code and p.stderr.startswith("Usage:") and p.stderr.endswith(message[6:] + "\n")
        else:
            assert (p.returncode, p.stderr) == (code, f"car-onnx: error: {message}\n")
        assert sorted(os.listdir(root)) == ["bundle", "good.jsonl", "ro", "secret.jsonl"]  # no work dir, no output


def test_missing_input_or_output_directory_fail_before_any_work(perm_root):
    root, bundle, env = perm_root
    empty = tempfile.mkdtemp(prefix="car-onnx-empty-")  # outside root, whose listing must not change
    check_refused(
        root,
        bundle,
        env,
        [
            (
                (empty, f"{root}/o.jsonl"),
                1,
                f"{empty}: a directory with no dataset files (.json, .jsonl, .ndjson, .csv, .parquet)",
            ),
            ((f"{root}/*.none", f"{root}/o.jsonl"), 1, f"{root}/*.none: no file matches this pattern"),
            ((f"{root}/none.jsonl", f"{root}/o.jsonl"), 1, f"{root}/none.jsonl: no such file"),
            (
                (f"{root}/good.jsonl", f"{root}/no/o.jsonl"),
                2,
                f"{root}/no/o.jsonl: the directory {root}/no does not exist",
            ),
        ],
    )


def test_unreadable_input_and_read_only_output_directory_fail_before_any_work(perm_root):
    root, bundle, env = perm_root
    prefix = unprivileged()
    if prefix is None:
        pytest.skip("running as root without setpriv (util-linux) to drop privileges: root reads and writes anything")
    check_refused(
        root,
        bundle,
        env,
        [
            (
                (f"{root}/secret.jsonl", f"{root}/o.jsonl"),
                2,
                f"Usage:Error: Invalid value for 'input': path '{root}/secret.jsonl' is not readable.",
            ),
            (
                (f"{root}/good.jsonl", f"{root}/ro/o.jsonl"),
                2,
                f"{root}/ro/o.jsonl: the directory {root}/ro is not writable",
            ),
        ],
        prefix,
    )
    code = (
        "import sys\nfrom pathlib import Path\nfrom car_onnx import Model\nfrom car_onnx.jobs import pipeline\nfrom car_onnx.errors import CarError\n"
        "try:\n    pipeline.score(pipeline.Job(Path(sys.argv[1])), Model(sys.argv[2]), Path(sys.argv[3]))\n"
        "except CarError as err:\n    print(err)\n"
    )
    p = subprocess.run(
        [*prefix, sys.executable, "-c", code, f"{root}/secret.jsonl", bundle, f"{root}/o.jsonl"],
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
    )
    assert p.stdout == f"{root}/secret.jsonl: cannot read: Permission denied\n", p.stderr
