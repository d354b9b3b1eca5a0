"""The cluster launchers' dry runs: the exact gcloud / kubectl / sbatch commands, the
manifest and the batch script they would write, and their refusals of bad input."""

import io
import json
import shlex

import pytest

from launch import gke, slurm, tpu_vm

TRAIN = ["--", "train", "--config", "configs/cifar10.py", "--workdir", "/mnt/runs/c10"]


def dry(module, *argv):
    out = io.StringIO()
    sh = module.main(["--dry_run", *argv], out=out)
    return sh.printed, out.getvalue()


def test_tpu_vm_create_setup_run_logs_stop_delete():
    where = ["--name", "k", "--zone", "us-central2-b"]
    assert dry(tpu_vm, "create", *where, "--type", "v4-32", "--spot")[0] == [
        "gcloud compute tpus tpu-vm create k --zone=us-central2-b --accelerator-type=v4-32 "
        "--version=tpu-ubuntu2204-base --spot"]
    queued = dry(tpu_vm, "create", *where, "--queued", "--project", "p1")[0]
    assert queued[0].startswith("gcloud compute tpus queued-resources create k --node-id=k --zone=us-central2-b "
                                "--project=p1 --accelerator-type=v4-8")
    setup = dry(tpu_vm, "setup", *where)[0]
    assert setup[0] == "git archive --format=tar.gz -o /tmp/kairos-k.tar.gz HEAD"
    assert setup[1] == "gcloud compute tpus tpu-vm scp /tmp/kairos-k.tar.gz k:kairos.tar.gz --zone=us-central2-b " \
                       "--worker=all"
    ssh = shlex.split(setup[2])
    assert ssh[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "k", "--zone=us-central2-b", "--worker=all"]
    remote = ssh[-1]
    assert "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/pip install 'jax[tpu]==0.10.2'" in remote
    cloned = shlex.split(dry(tpu_vm, "setup", *where, "--repo", "https://example.org/k.git")[0][0])[-1]
    assert cloned.startswith("--command=rm -rf kairos && git clone https://example.org/k.git kairos && cd kairos")
    run = shlex.split(dry(tpu_vm, "run", *where, *TRAIN)[0][0])
    assert run[-2] == "--worker=all" and run[-1] == (
        "--command=cd kairos && nohup .venv/bin/python -m launch.train --config configs/cifar10.py "
        "--workdir /mnt/runs/c10 --multihost > kairos.log 2>&1 &")
    assert shlex.split(dry(tpu_vm, "logs", *where)[0][0])[-2:] == ["--worker=0", "--command=tail -n 200 -f kairos/kairos.log"]
    assert "pkill -TERM" in dry(tpu_vm, "stop", *where)[0][0]
    assert dry(tpu_vm, "delete", *where)[0] == ["gcloud compute tpus tpu-vm delete k --zone=us-central2-b --quiet"]
    assert dry(tpu_vm, "delete", *where, "--queued")[0] == [
        "gcloud compute tpus queued-resources delete k --zone=us-central2-b --force --quiet"]


def test_slurm_script_runs_one_process_per_gpu(tmp_path):
    printed, text = dry(slurm, "--nodes", "2", "--gpus_per_node", "4", "--partition", "gpu", "--script",
                        str(tmp_path / "j.sbatch"), *TRAIN)
    assert printed == [f"sbatch {tmp_path / 'j.sbatch'}"] and not (tmp_path / "j.sbatch").exists()
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --gpus-per-task=1", "#SBATCH --signal=TERM@120", "#SBATCH --partition=gpu",
                 "srun --kill-on-bad-exit=1 .venv/bin/python -m launch.train --config configs/cifar10.py "
                 "--workdir /mnt/runs/c10 --multihost"):
        assert line in text.splitlines()
    assert "account" not in text


def test_gke_manifest_is_a_jobset_with_one_pod_per_host(tmp_path):
    path = tmp_path / "m.yaml"
    out = io.StringIO()
    gke.main(["--dry_run", "--name", "c10", "--image", "reg/kairos:1", "--type", "v5litepod-16", "--volume", "runs:/mnt",
              "--manifest", str(path), *TRAIN], out=out)
    text = out.getvalue()
    body = json.loads(text[text.index("{"):text.rindex("}") + 1])
    assert body["kind"] == "JobSet"
    job = body["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert job["parallelism"] == job["completions"] == 4  # 16 chips, 4 per host
    pod = job["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
                                   "cloud.google.com/gke-tpu-topology": "4x4"}
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["google.com/tpu"] == 4
    assert container["command"][-1].endswith("launch.train --config configs/cifar10.py --workdir /mnt/runs/c10 "
                                             "--multihost")
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "runs"
    assert text.rstrip().endswith(f"+ kubectl apply -f {path}") and not path.exists()


def test_gke_multislice_sets_the_megascale_environment(tmp_path):
    out = io.StringIO()
    gke.main(["--dry_run", "--name", "c10", "--image", "reg/kairos:1", "--type", "v5p-16", "--slices", "3",
              "--manifest", str(tmp_path / "m.yaml"), "--", "evaluate", "--workdir", "/mnt/runs/c10"], out=out)
    text = out.getvalue()
    body = json.loads(text[text.index("{"):text.rindex("}") + 1])
    (replicated,) = body["spec"]["replicatedJobs"]
    assert replicated["replicas"] == 3 and replicated["template"]["spec"]["parallelism"] == 2  # 8 chips, 4 per host
    (container,) = replicated["template"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["MEGASCALE_COORDINATOR_ADDRESS"] == "c10-slice-0-0.c10" and env["MEGASCALE_NUM_SLICES"] == "3"
    assert env["MEGASCALE_SLICE_ID"] == {"fieldRef": {"fieldPath": "metadata.annotations['jobset.sigs.k8s.io/job-index']"}}
    assert container["command"][-1].endswith("launch.evaluate --workdir /mnt/runs/c10 --multihost")
    one = io.StringIO()
    gke.main(["--dry_run", "--name", "c10", "--image", "i", "--manifest", str(tmp_path / "m.yaml"), *TRAIN], out=one)
    assert "MEGASCALE" not in one.getvalue()


@pytest.mark.parametrize("module, argv, match", [
    (tpu_vm, ["run", "--name", "k", "--zone", "z"], "run needs the Kairos command"),
    (tpu_vm, ["logs", "--name", "k", "--zone", "z", "--", "train"], "only `run` takes a command"),
    (tpu_vm, ["run", "--name", "k", "--zone", "z", "--", "rm", "-rf", "/"], "must start with one of"),
    (slurm, ["--nodes", "0", *TRAIN], "must be >= 1"),
    (slurm, ["--time", "4h", *TRAIN], "HH:MM:SS"),
    (slurm, [], "give the Kairos command"),
    (gke, ["--name", "a", "--image", "i", "--type", "v9-1", *TRAIN], "unknown TPU type 'v9-1'"),
    (gke, ["--name", "a", "--image", "i", "--volume", "runs", *TRAIN], "CLAIM:/absolute"),
    (gke, ["--name", "a", "--image", "i", "--slices", "0", *TRAIN], "--slices must be >= 1"),
])
def test_bad_input_is_one_line_and_runs_nothing(module, argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        module.main(["--dry_run", *argv], out=io.StringIO())
    message = str(e.value.code) if isinstance(e.value.code, str) else capsys.readouterr().err
    assert match in message


def test_a_missing_tool_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(SystemExit, match="`sbatch` was not found on PATH"):
        slurm.main(["--script", str(tmp_path / "j.sbatch"), *TRAIN], out=io.StringIO())
    assert (tmp_path / "j.sbatch").exists()  # the script is written; submitting it is what failed
