"""The quick start trains the fd_shapes feature network in a second process beside the tokenizer."""

from __future__ import annotations

import torch

from argen.cli.quickstart import FeatureNetJob


def test_feature_net_trains_beside_the_main_process_on_one_thread_each(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        job = FeatureNetJob(tmp_path, steps=3)
        assert job.process is not None and job.process.is_alive()
        assert torch.get_num_threads() == 1  # the main process leaves the other core to the job
        net = job.wait()
        assert (net / "model.safetensors").is_file()
        assert torch.get_num_threads() == 2
        assert FeatureNetJob(tmp_path, steps=3).process is None  # trained once: nothing to start
    finally:
        torch.set_num_threads(before)


def test_feature_net_in_process_when_sequential(tmp_path):
    job = FeatureNetJob(tmp_path, steps=3, parallel=False)
    assert job.process is None
    assert (job.wait() / "model.safetensors").is_file()
