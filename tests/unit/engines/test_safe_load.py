"""Checkpoints load without running code, and damaged files are named.

A real DeepSpeed engine (ZeRO 0, 2, 3 in fp32 and ZeRO 2 in bf16, CPU/gloo, in a fresh process: DeepSpeed caches
process groups in module state) saves a checkpoint, and a second engine restores it through the restricted
loader with identical weights and optimizer moments; a planted pickle in the same place is refused before its
payload runs.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from rlhf.engines.safe_load import (
    DamagedCheckpointError,
    UnsafeCheckpointError,
    safe_torch_load,
    verify_digests,
    write_digests,
)

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = textwrap.dedent(
    """
    import glob, os, sys, torch, deepspeed
    from rlhf.engines.dist import free_port, init_distributed
    from rlhf.engines.safe_load import UnsafeCheckpointError, restrict_loading

    init_distributed(0, 1, "127.0.0.1", free_port(), "cpu")
    out, marker = sys.argv[1], sys.argv[2]

    def engine(stage, dtype, seed):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)).to(dtype)
        cfg = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
               "zero_optimization": {"stage": stage}, "bf16": {"enabled": dtype == torch.bfloat16}}
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        eng, *_ = deepspeed.initialize(model=model, optimizer=opt, config=cfg)
        restrict_loading(eng)
        return eng

    def params(eng):
        return [p.detach().float().clone() for p in eng.module.parameters()]

    for stage, dtype in ((0, torch.float32), (2, torch.float32), (3, torch.float32), (2, torch.bfloat16)):
        a = engine(stage, dtype, 0)
        for _ in range(2):
            loss = a(torch.ones(2, 4, dtype=dtype)).float().pow(2).mean()
            a.backward(loss)
            a.step()
        path = f"{out}/s{stage}{dtype}"
        a.save_checkpoint(path, tag="state", client_state={"step": 2})
        b = engine(stage, dtype, 1)  # other initial weights
        _, client = b.load_checkpoint(path, tag="state")
        assert client["step"] == 2
        if stage < 3:
            assert all(torch.equal(x, y) for x, y in zip(params(a), params(b))), stage
        # One more identical step from both: equal moments give equal weights.
        for e in (a, b):
            loss = e(torch.ones(2, 4, dtype=dtype)).float().pow(2).mean()
            e.backward(loss)
            e.step()
        if stage < 3:
            assert all(torch.equal(x, y) for x, y in zip(params(a), params(b))), stage
        print(f"stage {stage} {dtype} restored", flush=True)

    # A planted object where the optimizer state should be: refused, its payload never runs.
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    victim = sorted(glob.glob(f"{out}/s2torch.float32/state/*optim_states.pt"))[0]
    torch.save({"optimizer_state_dict": Payload()}, victim)
    b = engine(2, torch.float32, 1)
    try:
        b.load_checkpoint(f"{out}/s2torch.float32", tag="state")
    except UnsafeCheckpointError as e:
        assert "loading it would run code" in str(e) and victim in str(e), e
        print("planted object refused", flush=True)
    """
)


def test_deepspeed_state_round_trips_through_the_restricted_loader_and_a_planted_object_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), str(marker)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.endswith(("restored", "refused"))]
    assert lines == [
        "stage 0 torch.float32 restored",
        "stage 2 torch.float32 restored",
        "stage 3 torch.float32 restored",
        "stage 2 torch.bfloat16 restored",
        "planted object refused",
    ], proc.stdout[-2000:]
    assert not marker.exists()


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_plain_torch_load_would_run_the_payload_and_the_safe_one_does_not(tmp_path):
    marker = tmp_path / "ran"
    bad = tmp_path / "state.pt"
    torch.save({"x": torch.ones(2), "obj": _Payload(str(marker))}, bad)
    with pytest.raises(UnsafeCheckpointError, match=r"state.pt holds an object .* run code"):
        safe_torch_load(str(bad))
    assert not marker.exists()
    # The unsafe path really is unsafe: this is what the restricted loader prevents.
    torch.load(bad, weights_only=False)
    assert marker.exists()
    good = tmp_path / "good.pt"
    torch.save({"w": torch.arange(3.0), "step": 4, "betas": (0.9, 0.95)}, good)
    assert safe_torch_load(str(good))["step"] == 4


def test_digests_name_the_damaged_file(tmp_path):
    ck = tmp_path / "step_000004"
    (ck / "policy").mkdir(parents=True)
    (ck / "policy" / "states.pt").write_bytes(b"x" * 1000)
    (ck / "trainer_state.json").write_text('{"step": 4}')
    write_digests(ck)
    seen = []
    verify_digests(ck, progress=seen.append)
    assert seen == ["policy/states.pt", "trainer_state.json"]
    with open(ck / "policy" / "states.pt", "r+b") as f:  # a truncated write
        f.truncate(10)
    with pytest.raises(DamagedCheckpointError, match=r"policy/states.pt has 10 bytes, 1000 were saved"):
        verify_digests(ck)
    (ck / "policy" / "states.pt").write_bytes(b"y" * 1000)  # same size, other contents
    with pytest.raises(DamagedCheckpointError, match="does not match the digest"):
        verify_digests(ck)
    (ck / "policy" / "states.pt").unlink()
    with pytest.raises(DamagedCheckpointError, match="missing"):
        verify_digests(ck)
    pickle.dumps(DamagedCheckpointError("x"))  # crosses Ray process boundaries
