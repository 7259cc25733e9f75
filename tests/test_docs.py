"""The shell blocks of README.md and docs/*.md run as written, and their paths and provenance stay honest.

Every fenced ```bash block is executed verbatim (`bash` with `set -eo pipefail`), in document order, in a sandbox
laid out like the repository (`examples/` and `hf_adautomix/` linked, `benchmarks/*.py` copied so that their
results land in the sandbox) with a sibling `../shared/data/cifar10/`; the test first writes the data the docs
name, small and generated (from the embedded digits): `data/train|val/<class>/*.png`, the `save_to_disk` folders
`my_org/my_images` and `uoft-cs/cifar100`, a tiny transformers ResNet at `microsoft/resnet-50` (local folders win
over Hub ids; everything is offline) and CIFAR-10-shaped parquet files (`img` image bytes, `label` ClassLabel).
Work is shrunk only through `HF_ADAUTOMIX_SMOKE=1` (hf_adautomix/smoke.py: each documented script appends its
own caps, e.g. two training steps), so every flag of every command is parsed and used. A block with `$RANK`
(several machines) runs twice at once, with RANK=0 and RANK=1 and MASTER=127.0.0.1: two "machines" on localhost.
On a machine without a GPU the smoke caps add `--use_cpu True`, so the GPU launch lines run as CPU processes.

The docs run concurrently (one thread per file, its blocks in order in its own sandbox); one test per block waits
for its block, names it by file and line, and shows the failing command's stderr tail (full logs in the sandbox).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import docs_python
import pytest

# One worker runs the whole module under pytest-xdist: the fixture runs the docs once for all their blocks' tests.
pytestmark = pytest.mark.xdist_group("docs")

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(bash|sh|shell|console)\n(.*?)^```", flags=re.S | re.M)
BLOCK_TIMEOUT_S = 400
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_FIRST = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
]


@dataclass(frozen=True)
class Block:
    doc: str  # path relative to the repository
    line: int  # line of the opening fence
    lang: str
    text: str

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def machines(self) -> bool:
        """The several-machines block: run once per rank."""
        return "$RANK" in self.text


def doc_blocks(path: Path, text: str | None = None) -> list[Block]:
    text = path.read_text() if text is None else text
    doc = str(path.relative_to(ROOT))
    return [
        Block(doc, text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2)) for m in FENCE.finditer(text)
    ]


BLOCKS = [b for doc in DOCS for b in doc_blocks(doc)]


# ----- The sandbox and its data ----------------------------------------------------------------------------------


def _digits(per_class_train: int, per_class_val: int):
    """Small, class-balanced slices of the embedded digits (image, label "0".."9")."""
    from hf_adautomix.data import load_digits_dataset

    train, val = load_digits_dataset()

    def take(ds, n):
        seen, rows = {}, []
        for i, label in enumerate(ds["label"]):
            if seen.get(label, 0) < n:
                seen[label] = seen.get(label, 0) + 1
                rows.append(i)
        return ds.select(rows)

    return take(train, per_class_train), take(val, per_class_val)


def _as(ds, image: str, label: str, names: list[str]):
    """`ds` with the column names and class names of another dataset."""
    import datasets

    ds = ds.cast_column("label", datasets.ClassLabel(names=names))
    renames = {k: v for k, v in (("image", image), ("label", label)) if k != v}
    return ds.rename_columns(renames) if renames else ds


def write_doc_data(repo: Path) -> None:
    """The data and models the docs' commands name, relative to `repo` (and `repo/../shared`)."""
    import datasets
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    train, val = _digits(4, 2)
    names = train.features["label"].names
    for split, ds in (("train", train), ("val", val)):
        for i, row in enumerate(ds):
            folder = repo / "data" / split / names[row["label"]]
            folder.mkdir(parents=True, exist_ok=True)
            row["image"].save(folder / f"{i}.png")
    datasets.DatasetDict(train=train, validation=val).save_to_disk(str(repo / "my_org" / "my_images"))
    cifar100 = {
        s: _as(ds, "img", "fine_label", CIFAR100_FIRST) for s, ds in (("train", train), ("test", val))
    }
    datasets.DatasetDict(cifar100).save_to_disk(str(repo / "uoft-cs" / "cifar100"))
    # A bottleneck ResNet with a 1000-class head and ResNet-50's image processor, as microsoft/resnet-50, but tiny.
    config = ResNetConfig(
        layer_type="bottleneck", depths=[1, 1, 1, 1], hidden_sizes=[16, 16, 32, 32], embedding_size=8,
        num_labels=1000,
    )  # fmt: skip
    ResNetForImageClassification(config).save_pretrained(repo / "microsoft" / "resnet-50")
    ConvNextImageProcessor(crop_pct=0.875, size={"shortest_edge": 224}).save_pretrained(
        repo / "microsoft" / "resnet-50"
    )
    # CIFAR-10's parquet layout (img: image bytes, label: ClassLabel), two training shards and one test file.
    train10, test10 = _as(train, "img", "label", CIFAR10_NAMES), _as(val, "img", "label", CIFAR10_NAMES)
    half = len(train10) // 2
    for folder in (repo / "cifar10", repo.parent / "shared" / "data" / "cifar10"):
        folder.mkdir(parents=True, exist_ok=True)
        train10.select(range(half)).to_parquet(str(folder / "train-00000-of-00002.parquet"))
        train10.select(range(half, len(train10))).to_parquet(str(folder / "train-00001-of-00002.parquet"))
        test10.to_parquet(str(folder / "test-00000-of-00001.parquet"))


def make_sandbox(base: Path, template: Path | None = None) -> Path:
    """`base/repo` laid out like the repository, with `base/shared`; the data copied from `template` if given."""
    repo = base / "repo"
    if template is not None:
        shutil.copytree(template, base, symlinks=True, dirs_exist_ok=True)
    repo.mkdir(parents=True, exist_ok=True)
    for name in (
        "examples",
        "hf_adautomix",
        "docs",
        "model_cards",
        "README.md",
        "setup.cfg",
        "pyproject.toml",
    ):
        if (ROOT / name).exists() and not (repo / name).exists():
            (repo / name).symlink_to(ROOT / name)
    # Copied, not linked: step_cost.py and data_path.py write their results next to themselves by default.
    (repo / "benchmarks").mkdir(exist_ok=True)
    for script in (ROOT / "benchmarks").glob("*.py"):
        shutil.copy2(script, repo / "benchmarks" / script.name)
    return repo


def run_env(base: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ACCELERATE_", "PET_", "TORCHELASTIC_"))
        and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "MASTER")
    }
    env.update(
        HF_ADAUTOMIX_SMOKE="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(base.resolve() / "hf_home"),  # a clean accelerate config and datasets cache
        OMP_NUM_THREADS="1",
        MPLBACKEND="Agg",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


# ----- Running blocks -------------------------------------------------------------------------------------------

# `-x`: each command is echoed to stderr (`+ python ...`) before it runs, so a failure's stderr tail names it.
PRELUDE = "set -eo pipefail\nset -x\n"
LIVE: set[subprocess.Popen] = (
    set()
)  # the bash processes running now, killed (with their children) at teardown
LIVE_LOCK = threading.Lock()


@dataclass
class Result:
    block: Block
    returncodes: list[int] = field(default_factory=list)
    seconds: float = 0.0
    stderr_tail: str = ""
    logs: list[str] = field(default_factory=list)
    not_run: str | None = None  # why the block did not run
    failed_at: str = ""  # the command that failed, from bash's `-x` trace

    @property
    def ok(self) -> bool:
        return self.not_run is None and bool(self.returncodes) and all(rc == 0 for rc in self.returncodes)


def _tail(path: Path, chars: int = 3000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-chars:]


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # bash and everything it started (its own session)
    proc.wait()


def run_block(block: Block, repo: Path, env: dict[str, str], timeout: float = BLOCK_TIMEOUT_S) -> Result:
    """The block's text, verbatim, after `set -eo pipefail` in `repo`; twice at once (RANK=0/1) for machines."""
    base = repo.resolve().parent
    tag = re.sub(r"\W", "_", block.id)
    script = base / f"{tag}.sh"
    script.write_text(PRELUDE + block.text)
    ranks = [{"RANK": str(r), "MASTER": "127.0.0.1"} for r in (0, 1)] if block.machines else [{}]
    result, procs, t0 = Result(block), [], time.perf_counter()
    for i, extra in enumerate(ranks):
        out, err = base / f"{tag}.{i}.stdout", base / f"{tag}.{i}.stderr"
        result.logs += [str(out), str(err)]
        with open(out, "w") as fo, open(err, "w") as fe, LIVE_LOCK:
            proc = subprocess.Popen(
                ["bash", str(script)], cwd=repo, env={**env, **extra}, stdout=fo, stderr=fe,
                start_new_session=True,
            )  # fmt: skip
            procs.append(proc)
            LIVE.add(proc)
    for proc in procs:
        try:
            proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            _kill(proc)
        with LIVE_LOCK:
            LIVE.discard(proc)
    result.seconds = time.perf_counter() - t0
    result.returncodes = [p.returncode for p in procs]
    for i, p in enumerate(procs):
        if p.returncode != 0 and not result.failed_at:
            trace = Path(result.logs[2 * i + 1]).read_text(errors="replace").splitlines()
            result.failed_at = next((line[2:] for line in reversed(trace) if line.startswith("+ ")), "?")
    result.stderr_tail = "\n".join(
        f"--- {'RANK=' + ranks[i]['RANK'] + ' ' if block.machines else ''}stderr (exit {p.returncode}):\n"
        + _tail(base / f"{tag}.{i}.stderr")
        for i, p in enumerate(procs)
        if p.returncode != 0
    )
    return result


class DocRunner:
    """One thread per doc file: its blocks in order in its own sandbox; a future per block."""

    def __init__(self, base: Path):
        self.base = base
        self.futures: dict[str, Future] = {}
        self.stopped = threading.Event()

    def start(self, wanted: set[str]) -> None:
        template = self.base / "template"
        write_doc_data(template / "repo")
        by_doc: dict[str, list[Block]] = {}
        for block in BLOCKS:
            by_doc.setdefault(block.doc, []).append(block)
        for doc, blocks in by_doc.items():
            last = max((i for i, b in enumerate(blocks) if b.id in wanted), default=None)
            if last is None:
                continue
            blocks = blocks[: last + 1]  # the wanted blocks, and the ones before them: they make their inputs
            self.futures.update((b.id, Future()) for b in blocks)
            threading.Thread(target=self._run_doc, args=(doc, blocks, template), daemon=True).start()

    def _run_doc(self, doc: str, blocks: list[Block], template: Path) -> None:
        base = self.base / re.sub(r"\W", "_", doc)
        try:
            repo = make_sandbox(base, template)
            env = run_env(base)
            sock = docs_python.socket_path(base)
            server = docs_python.start_server(sock, env, base / "warm_python.log")
        except BaseException as err:  # noqa: BLE001 (reported by every block's test)
            for block in blocks:
                self.futures[block.id].set_exception(err)
            return
        with LIVE_LOCK:
            LIVE.add(server)
        shims = docs_python.install_shim(base / "bin")
        env = {**env, "PATH": f"{shims}{os.pathsep}{env['PATH']}", docs_python.SOCKET_VAR: str(sock)}
        try:
            self._run_blocks(blocks, repo, env)
        finally:
            _kill(server)
            with LIVE_LOCK:
                LIVE.discard(server)

    def _run_blocks(self, blocks: list[Block], repo: Path, env: dict[str, str]) -> None:
        failed = None
        for block in blocks:
            if failed is not None or self.stopped.is_set():
                not_run = f"{failed} failed before it" if failed else "the test session ended"
                self.futures[block.id].set_result(Result(block, not_run=not_run))
                continue
            try:
                result = run_block(block, repo, env)
            except BaseException as err:  # noqa: BLE001 (reported by the block's test)
                self.futures[block.id].set_exception(err)
                failed = block.id
                continue
            if not result.ok:
                failed = block.id
            self.futures[block.id].set_result(result)

    def result(self, block_id: str) -> Result:
        return self.futures[block_id].result(timeout=BLOCK_TIMEOUT_S * len(BLOCKS))

    def stop(self) -> None:
        self.stopped.set()
        with LIVE_LOCK:
            running = list(LIVE)
        for proc in running:
            _kill(proc)


@pytest.fixture(scope="module")
def doc_runner(request, tmp_path_factory):
    """Starts every doc file that has a selected block (up to its last selected block), all at once."""
    wanted = {
        item.callspec.params["block"].id
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_doc_block"
    }
    runner = DocRunner(tmp_path_factory.mktemp("docs_run"))
    runner.start(wanted)
    yield runner
    runner.stop()


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.id)
def test_doc_block(block, doc_runner):
    result = doc_runner.result(block.id)
    # A block after a failed one cannot run (its inputs were never made): it fails too, naming the cause.
    assert result.not_run is None, f"{block.id} did not run: {result.not_run}"
    print(f"{block.id}: {result.seconds:.1f} s")
    assert result.ok, (
        f"{block.id} failed (exit {result.returncodes}) at `{result.failed_at}`:\n{result.stderr_tail}\n"
        f"(full logs: {' '.join(result.logs)})"
    )


# ----- Broken flags fail ------------------------------------------------------------------------------------------


def _load_script(path: Path, monkeypatch):
    name = f"_doc_script_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def documented_scripts() -> set[str]:
    return {s for b in BLOCKS for s in re.findall(r"(?:examples|benchmarks)/\w+\.py", b.text)}


def first_documented_args(script: str) -> list[str]:
    """The arguments of the docs' first command that runs `script` (continuation lines joined)."""
    for block in BLOCKS:
        for line in re.sub(r"\\\n\s*", " ", block.text).splitlines():
            words = shlex.split(line, comments=True)
            if script in words:
                return words[words.index(script) + 1 :]
    raise AssertionError(f"no command runs {script}")


# script -> the function that parses its command line (in-process: the script is imported, nothing is loaded)
PARSERS = {
    "examples/run_image_classification.py": "parse_args",
    "examples/evaluate_robustness.py": "main",
    "examples/plot_training.py": "main",
    "examples/compare_runs.py": "main",
    "benchmarks/step_cost.py": "parse_args",
    "benchmarks/data_path.py": "parse_args",
    "benchmarks/accuracy.py": "parse_args",
    "benchmarks/mask_collapse.py": "main",
}


@pytest.mark.parametrize("script", PARSERS)
def test_a_broken_flag_in_a_documented_command_is_refused(script, capsys, monkeypatch):
    """Each script the docs run, given its first documented command with `--no_such_flag 1` planted, stops while
    parsing that command line, before loading any data or model: so a mistyped flag in any block fails the block
    (`bash -e`: at that command). A flag planted after accuracy.py's `--` goes to run_image_classification.py."""
    assert documented_scripts() <= set(PARSERS), f"add to PARSERS: {documented_scripts() - set(PARSERS)}"
    args = first_documented_args(script)
    at = args.index("--") if "--" in args else len(args)
    planted = [*args[:at], "--no_such_flag", "1", *args[at:]]
    module = _load_script(ROOT / script, monkeypatch)
    with pytest.raises((SystemExit, ValueError)) as refused:
        getattr(module, PARSERS[script])(planted)
    if refused.type is SystemExit:  # argparse: usage and `error: unrecognized arguments: --no_such_flag 1`
        assert refused.value.code not in (0, None)
        assert "--no_such_flag" in capsys.readouterr().err
    else:  # HfArgumentParser: "Some specified arguments are not used ...", the CLI's one `error:` line
        assert "--no_such_flag" in str(refused.value)


def test_a_planted_broken_flag_fails_its_block(tmp_path):
    """The runner itself: the quickstart block with a broken flag in its first command fails at that command, in
    seconds (nothing trained, the next commands not started), and the failure shows the script's error line."""
    block = next(b for b in BLOCKS if b.doc == "README.md" and "--output_dir out_ada" in b.text)
    planted = block.text.replace(
        "run_image_classification.py --output_dir out ",
        "run_image_classification.py --no_such_flag --output_dir out ",
        1,
    )
    assert planted != block.text
    repo = make_sandbox(tmp_path)
    result = run_block(
        Block(block.doc, block.line, block.lang, planted), repo, run_env(tmp_path), timeout=120
    )
    assert result.returncodes and result.returncodes[0] != 0 and result.seconds < 60
    assert "--no_such_flag" in result.failed_at and result.failed_at.startswith("python ")
    errors = [line for line in result.stderr_tail.splitlines() if line.startswith("error:")]
    assert errors and "--no_such_flag" in errors[-1], result.stderr_tail
    assert not (repo / "out").exists() and not (repo / "out_ada").exists()


def test_smoke_caps_apply_only_with_the_variable(monkeypatch, caplog):
    from hf_adautomix.smoke import ENV, smoke_argv

    monkeypatch.delenv(ENV, raising=False)
    assert smoke_argv(["--max_steps", "100"], ["--max_steps", "2"]) == ["--max_steps", "100"]
    monkeypatch.setenv(ENV, "0")
    assert smoke_argv(["--max_steps", "100"], ["--max_steps", "2"]) == ["--max_steps", "100"]
    monkeypatch.setenv(ENV, "1")
    assert smoke_argv(["--max_steps", "100"], ["--max_steps", "2"]) == [
        "--max_steps",
        "100",
        "--max_steps",
        "2",
    ]
    assert "smoke run" in caplog.text
    script = _load_script(ROOT / "examples" / "run_image_classification.py", monkeypatch)
    _, _, _, training_args = script.parse_args(smoke_argv(["--max_steps", "100"], script.SMOKE_CAPS))
    assert training_args.max_steps == 2  # the last value of a repeated flag wins


def test_every_shell_block_is_run_by_bash():
    """`console` blocks (with prompts) would need their own runner: the docs use ```bash."""
    assert BLOCKS and all(b.lang in ("bash", "sh", "shell") for b in BLOCKS), [b.id for b in BLOCKS]
    assert {b.doc for b in BLOCKS} >= {"README.md", "docs/benchmarks.md", "docs/robustness.md"}


# ----- Paths and provenance ---------------------------------------------------------------------------------------


def test_doc_commands_use_relative_paths():
    for block in BLOCKS:
        assert not re.search(r"(?<![\w.])/(work|home|tmp|root|mnt)/", block.text), block.id


def test_quickstart_table_says_how_it_was_measured():
    text = (ROOT / "README.md").read_text()
    intro = text[: text.index("| `--mixup` | wall time")].rstrip().rsplit("\n\n", 1)[-1]
    for fact in ("2026-12-03", "2-core", "OMP_NUM_THREADS=1", "one run each", "other work"):
        assert fact in intro, fact


def test_push_without_network_is_described_as_it_happens():
    text = " ".join((ROOT / "README.md").read_text().split())
    assert "before any training" in text and "Cannot create the Hub repo" in text
    assert "Cannot create the Hub repo" in (ROOT / "hf_adautomix" / "hub_push.py").read_text()
