"""What a cluster gets: the sdist and wheel, what Beam's stager sends, and the worker Dockerfile.

The wheel is built once per module from a copy of the sources (so the build leaves nothing in
the repository). A clean-venv install of that wheel, which pulls apache-beam and its
dependencies from the package index (about a minute or more), runs only with
``BEAM_M2V_SLOW_TESTS=1``.
"""

from __future__ import annotations

import configparser
import email
import fnmatch
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import beam_m2v
from tests.beam_helpers import beam_worker_pool
from tests.conftest import REPO

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the `build` package brings tomli
    import tomli as tomllib

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
NAME = PYPROJECT["project"]["name"]
VERSION = PYPROJECT["project"]["version"]
DIST_NAME = NAME.replace("-", "_")
SAMPLE = REPO / "samples" / "linux-doc-sample.parquet"
BUNDLED_MODEL = REPO / "models" / "m2v-minilm-64"
SLOW = os.environ.get("BEAM_M2V_SLOW_TESTS") == "1"
NOT_SOURCES = shutil.ignore_patterns("__pycache__", "*.egg-info", ".*_cache")


def build_backend_installed() -> bool:
    """Whether this interpreter has the [build-system] requirements, as ``--no-isolation`` needs."""
    for text in PYPROJECT["build-system"]["requires"]:
        requirement = Requirement(text)
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            return False
        if not requirement.specifier.contains(installed, prereleases=True):
            return False
    return True


NO_ISOLATION = build_backend_installed()
MISSING_BACKEND = (
    f"this interpreter lacks the build requirements {PYPROJECT['build-system']['requires']} "
    "(the [test] extra does not install them), so `python -m build --no-isolation` fails"
)


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What a build reads (plus tests/ and bench/, to check they stay out), without caches or build output."""
    target = tmp_path_factory.mktemp("source") / "beam-m2v"
    target.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, target / name)
    for name in ("beam_m2v", "pipelines", "tests", "bench"):
        shutil.copytree(REPO / name, target / name, ignore=NOT_SOURCES)
    return target


@pytest.fixture(scope="module")
def dist(source_copy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdist and wheel from ``python -m build``: ``--no-isolation`` when this venv can, else isolated.

    The isolated build installs setuptools and wheel from the configured package index.
    """
    out = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "build", "--outdir", str(out), str(source_copy)]
    if NO_ISOLATION:
        command.insert(3, "--no-isolation")
    process = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    return out


def wheel_of(dist: Path) -> Path:
    (wheel,) = dist.glob(f"{DIST_NAME}-{VERSION}-py3-none-any.whl")
    return wheel


def test_wheel_holds_the_packages_and_the_console_script(dist):
    with zipfile.ZipFile(wheel_of(dist)) as wheel:
        names = set(wheel.namelist())
        info = f"{DIST_NAME}-{VERSION}.dist-info"
        entry_points = configparser.ConfigParser()
        entry_points.read_string(wheel.read(f"{info}/entry_points.txt").decode())
        metadata = email.message_from_bytes(wheel.read(f"{info}/METADATA"))
    expected = {
        path.relative_to(REPO).as_posix()
        for pattern in ("beam_m2v/*.py", "beam_m2v/transforms/*.py", "pipelines/*.py")
        for path in REPO.glob(pattern)
    }
    assert expected <= names, sorted(expected - names)
    assert "beam_m2v/py.typed" in names
    assert dict(entry_points["console_scripts"]) == {"beam-m2v": "pipelines.cli:entry_point"}
    top_levels = {name.split("/", 1)[0] for name in names}
    assert top_levels == {"beam_m2v", "pipelines", info}, top_levels
    assert metadata["Name"] == NAME and metadata["Version"] == VERSION
    requires = [Requirement(text) for text in metadata.get_all("Requires-Dist")]
    beam = next(req for req in requires if req.name == "apache-beam" and not req.marker)
    assert beam.specifier == SpecifierSet(">=2.77,<2.78")


def test_sdist_holds_the_sources(dist):
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"pyproject.toml", "README.md", "beam_m2v/py.typed", "pipelines/cli.py", "beam_m2v/remote_files.py"} <= names


# -- what Beam's stager sends to Dataflow / a portable job service ----------------------------------


def stage(tmp_path: Path, *options: str) -> dict[str, Path]:
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.portability.api import beam_runner_api_pb2
    from apache_beam.runners.portability.stager import Stager

    staging = tmp_path / "staging"
    staging.mkdir()
    resources = Stager.create_job_resources(
        PipelineOptions(["--sdk_location=container", *options]),
        str(staging),
        log_submission_env_dependencies=False,
    )
    files = {}
    for artifact in resources:
        role = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(artifact.role_payload)
        path = beam_runner_api_pb2.ArtifactFilePayload.FromString(artifact.type_payload).path
        files[role.staged_name] = Path(path)
    return files


def test_stager_takes_the_wheel_as_extra_package(dist, tmp_path):
    """``--extra_package dist/*.whl``: what the Dataflow runbook recommends; installed on every worker."""
    wheel = wheel_of(dist)
    files = stage(tmp_path, f"--extra_package={wheel}")
    assert files[wheel.name].read_bytes() == wheel.read_bytes()
    assert sorted(files) == sorted([wheel.name, "extra_packages.txt"])
    assert files["extra_packages.txt"].read_text().split() == [wheel.name]


@pytest.mark.xfail(
    condition=not NO_ISOLATION, raises=RuntimeError, strict=True, reason=f"ENVIRONMENT: {MISSING_BACKEND}"
)
def test_stager_builds_the_setup_file_into_a_workflow_tarball(source_copy, tmp_path):
    """``--setup_file ./pyproject.toml``: Beam runs ``python -m build --no-isolation --sdist`` in the launcher."""
    files = stage(tmp_path, f"--setup_file={source_copy / 'pyproject.toml'}")
    with tarfile.open(files["workflow.tar.gz"]) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"beam_m2v/remote_files.py", "pipelines/embed.py", "pyproject.toml"} <= names


# -- Dockerfile ---------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) of the repository's Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_base_image_is_the_pinned_beam_and_a_supported_python():
    images = [args.split()[0] for instruction, args in dockerfile_instructions() if instruction == "FROM"]
    assert images, "no FROM"
    beam_pin = next(
        Requirement(text).specifier for text in PYPROJECT["project"]["dependencies"] if text.startswith("apache-beam")
    )
    requires_python = SpecifierSet(PYPROJECT["project"]["requires-python"])
    for image in images:
        match = re.fullmatch(r"apache/beam_python(\d+\.\d+)_sdk:(\d+\.\d+\.\d+)", image)
        assert match, f"{image} is not a Beam Python SDK image"
        python, beam = match.groups()
        assert Version(beam) in beam_pin, f"{image}: Beam {beam} is not in the pinned {beam_pin}"
        assert Version(python) in requires_python, f"{image}: Python {python} is not in {requires_python}"


def dockerignored(path: str) -> bool:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = path.split("/")
    prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    return any(fnmatch.fnmatch(prefix, pattern.removeprefix("**/")) for pattern in patterns for prefix in prefixes)


def test_every_dockerfile_copy_source_exists_in_the_build_context():
    copies = [args for instruction, args in dockerfile_instructions() if instruction == "COPY"]
    assert copies
    checked = 0
    for args in copies:
        words = args.split()
        if any(word.startswith("--from=") for word in words):
            continue  # copies between stages
        sources = [word for word in words[:-1] if not word.startswith("--")]
        for source in sources:
            assert (REPO / source).exists(), f"COPY source {source} does not exist"
            assert source == "." or not dockerignored(source), f"COPY source {source} is excluded by .dockerignore"
            checked += 1
    assert checked >= 4
    for needed in ("pyproject.toml", "README.md", "beam_m2v/loading.py", "pipelines/cli.py", "models/m2v-minilm-64"):
        assert not dockerignored(needed), needed


def test_dockerfile_installs_every_extra_a_worker_uses():
    """gs:// and s3:// files and models (gcp, aws) and the fragments of a .lance output (lance) are read and
    written on the workers, so the worker image has them all."""
    instructions = dockerfile_instructions()
    installs = [args for instruction, args in instructions if instruction == "RUN" and "pip install" in args]
    extras = {
        extra.strip()
        for args in installs
        for group in re.findall(r"/tmp/beam-m2v\[([^\]]*)\]", args)
        for extra in group.split(",")
    }
    assert {"gcp", "aws", "lance"} <= extras <= set(PYPROJECT["project"]["optional-dependencies"]), extras


def test_dockerfile_model_build_arg_points_the_env_var_at_the_baked_model():
    instructions = dockerfile_instructions()
    assert ("ARG", 'MODEL_DIR=""') in instructions
    assert ("ENV", "BEAM_M2V_MODEL=${MODEL_DIR:+/opt/beam-m2v/model}") in instructions
    assert not any(instruction in {"ENTRYPOINT", "CMD"} for instruction, _ in instructions)  # keep Beam's boot


# -- the wheel alone, in a clean venv (slow: installs apache-beam from the index) ---------------------


@pytest.fixture(scope="module")
def clean_venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv (no system site-packages) with only the wheel and its dependencies."""
    venv = tmp_path_factory.mktemp("clean") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel_of(dist))],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-4000:]
    return venv


@pytest.fixture
def clean_worker_pool(clean_venv: Path, tmp_path: Path) -> Iterator[str]:
    """A worker pool whose SDK worker processes run the clean venv's Python, outside the repository."""
    bin_dir = str(clean_venv / "bin")
    with beam_worker_pool(python=f"{bin_dir}/python", env=clean_env(), cwd=tmp_path) as address:
        yield address


def clean_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    return {**env, "HF_HUB_OFFLINE": "1"}


def vectors_of(out: Path) -> tuple[list[int], np.ndarray]:
    table = pq.read_table(sorted(out.glob("part-*.parquet"))).sort_by("id")
    ids = table.column("id").to_pylist()
    return ids, np.asarray(table.column("embedding").combine_chunks().flatten(), dtype=np.float32).reshape(len(ids), -1)


@pytest.mark.skipif(not SLOW, reason="installs apache-beam into a clean venv from the index: BEAM_M2V_SLOW_TESTS=1")
@pytest.mark.parametrize("runner", ["local", "external-workers"])
def test_wheel_in_a_clean_venv_embeds_the_sample(clean_venv, runner, tmp_path, request):
    python = clean_venv / "bin" / "python"
    where = subprocess.run(
        [str(python), "-c", "import beam_m2v, pipelines; print(beam_m2v.__file__); print(pipelines.__file__)"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(path.startswith(str(clean_venv)) for path in where), where  # the wheel's copy, not the repo's
    beam_args = ["--runner=FnApiRunner"]
    if runner == "external-workers":
        pool = request.getfixturevalue("clean_worker_pool")
        beam_args = [
            "--runner=PortableRunner",
            "--job_endpoint=embed",
            "--environment_type=EXTERNAL",
            f"--environment_config={pool}",
            "--sdk_worker_parallelism=1",
        ]
    out = tmp_path / "vectors"
    process = subprocess.run(
        [
            str(clean_venv / "bin" / "beam-m2v"),
            "embed",
            "--input",
            str(SAMPLE),
            "--model",
            str(BUNDLED_MODEL),
            "--output",
            str(out),
            *beam_args,
        ],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert process.returncode == 0, process.stderr[-4000:]
    assert "2,000 rows read, 2,000 embedded, 0 failed" in process.stdout
    ids, vectors = vectors_of(out)
    texts = pq.read_table(SAMPLE).sort_by("id")
    assert ids == texts.column("id").to_pylist()
    assert np.array_equal(vectors, beam_m2v.load_model(BUNDLED_MODEL).encode(texts.column("text").to_pylist()))


# -- the public names, as a type checker sees them -----------------------------------------------


def test_beam_names_are_listed_once() -> None:
    """The lazily imported names: the ones imported for type checkers, in ``__all__``, all importable."""
    import ast

    tree = ast.parse((REPO / "beam_m2v" / "__init__.py").read_text(encoding="utf-8"))
    [checking] = [node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"]
    imported = [alias.name for node in checking.body if isinstance(node, ast.ImportFrom) for alias in node.names]
    assert imported == list(beam_m2v.BEAM_NAMES)
    assert set(beam_m2v.BEAM_NAMES) <= set(beam_m2v.__all__)
    from beam_m2v import transforms

    assert set(beam_m2v.BEAM_NAMES) <= set(transforms.__all__)
    assert all(getattr(beam_m2v, name) is getattr(transforms, name) for name in beam_m2v.BEAM_NAMES)


def test_mypy_sees_the_lazily_imported_names(tmp_path: Path) -> None:
    """``beam_m2v.EmbedText`` has its real type under mypy, so a misspelt keyword is caught before running.

    Third-party packages are left out (``--no-site-packages``) to keep the check to a few seconds.
    """
    snippet = tmp_path / "user_code.py"
    snippet.write_text(
        "import beam_m2v\n"
        "reveal_type(beam_m2v.EmbedText)\n"
        "reveal_type(beam_m2v.ModelSpec.of)\n"
        "beam_m2v.EmbedText('models/m2v-minilm-64', dimensionalty=3)\n"
        "beam_m2v.Model2VecModelHandler('models/m2v-minilm-64', max_batch_size='many')\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-site-packages",
            "--ignore-missing-imports",
            "--follow-imports=silent",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(snippet),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(REPO)},
    )
    lines = result.stdout.splitlines()
    assert any('Revealed type is "def (model: beam_m2v.transforms.model_cache.ModelSpec' in line for line in lines)
    assert any('Unexpected keyword argument "dimensionalty" for "EmbedText"' in line for line in lines), lines
    assert any('"max_batch_size" to "Model2VecModelHandler" has incompatible type "str"' in line for line in lines)
    assert not any('"object"' in line or '"Any"' in line for line in lines), lines
