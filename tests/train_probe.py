"""The package's training loop with two probes for the tests, given through ``train(on_step=...)``:
``--probe_rank_log`` writes each rank's region ids and weight checksum per step to ``output_dir/probe/``, and
``--probe_kill_at_step N`` SIGKILLs the process after step N (the resume test)."""

import json
import os
import signal
import sys
from pathlib import Path

from roi_attention.train import main


def _pop(argv: list[str], key: str) -> str | None:
    if key not in argv:
        return None
    index = argv.index(key)
    value = argv[index + 1]
    del argv[index : index + 2]
    return value


def run(argv: list[str]) -> int:
    kill_at = _pop(argv, "--probe_kill_at_step")
    rank_log = _pop(argv, "--probe_rank_log") == "true"
    output_dir = Path(argv[argv.index("--output_dir") + 1])

    def on_step(state):
        if rank_log:
            model = state.accelerator.unwrap_model(state.model)
            checksum = sum(p.detach().double().sum().item() for p in model.parameters())
            # how the model is wrapped: parameters sharded (FSDP2's DTensors), blocks checkpointed
            sharded = any(type(p).__name__ == "DTensor" for p in state.model.parameters())
            checkpointed = any("checkpoint_wrapped" in name for name, _ in state.model.named_modules())
            (output_dir / "probe").mkdir(exist_ok=True)
            with open(output_dir / "probe" / f"rank{state.accelerator.process_index}.jsonl", "a") as log:
                record = dict(step=state.step, region_ids=state.region_ids, checksum=checksum)
                log.write(json.dumps(dict(record, sharded=sharded, checkpointed=checkpointed)) + "\n")
        if kill_at is not None and state.step == int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)

    return main(argv, on_step=on_step)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
