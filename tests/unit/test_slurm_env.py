"""distri.slurm: SLURM's variables of an srun task mapped to torchrun's (pure functions, no cluster)."""

from __future__ import annotations

import pytest

from distri.slurm import first_host, srun_env, step_port, tasks_on_node

STEP = {
    "SLURM_JOB_ID": "4711", "SLURM_STEP_ID": "0", "SLURM_PROCID": "5", "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "8",
    "SLURM_STEP_TASKS_PER_NODE": "4(x2)", "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_JOB_NODELIST": "gpu[07-08]",
}  # fmt: skip


@pytest.mark.parametrize(
    "nodelist, host",
    [
        ("vm", "vm"),
        ("gpu[07-09,12],cpu1", "gpu07"),
        ("gpu[12,07-09]", "gpu12"),
        ("a[1-2]-b[3-4]", "a1-b3"),
        ("node1,node2", "node1"),
        ("n[001-004]", "n001"),
    ],
)
def test_first_host_of_a_slurm_host_list(nodelist, host):
    assert first_host(nodelist) == host


def test_first_host_refuses_a_list_it_cannot_read():
    with pytest.raises(ValueError, match="cannot read the first host"):
        first_host("gpu[07")


def test_tasks_per_node_in_slurms_compressed_form():
    assert [tasks_on_node("2(x3),1", n) for n in range(4)] == [2, 2, 2, 1]
    with pytest.raises(ValueError, match="tasks per node"):
        tasks_on_node("2x3", 0)


def test_a_task_of_a_two_node_step_gets_torchruns_variables():
    env = srun_env(STEP)
    assert env == {
        "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "GROUP_RANK": "1",
        "MASTER_ADDR": "gpu07", "MASTER_PORT": str(20000 + (8 * 4711) % 12000),
    }  # fmt: skip
    assert srun_env({**STEP, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500"})["MASTER_PORT"] == "29500"
    assert step_port("4711", "1") == step_port("4711", "0") + 1  # concurrent steps of a job differ


@pytest.mark.parametrize(
    "change",
    [
        {"SLURM_STEP_ID": None},  # the batch script itself, not an srun step
        {"SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "1"},  # one task: the job starts its own workers
        {
            "RANK": "0",
            "WORLD_SIZE": "8",
            "LOCAL_RANK": "0",
            "MASTER_ADDR": "h",
            "MASTER_PORT": "1",
        },  # torchrun
    ],
)
def test_left_alone_outside_a_multi_task_step(change):
    environ = {k: v for k, v in {**STEP, **change}.items() if v is not None}
    assert srun_env(environ) is None
