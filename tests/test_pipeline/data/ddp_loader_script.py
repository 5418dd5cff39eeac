"""Run under `accelerate launch --multi_gpu --num_processes 2`: one epoch with a collective per
step (as DDP's gradient all-reduce), so unequal step counts would hang. Writes RANK.json."""
import json
import sys

import torch
from accelerate import Accelerator

from pipeline.data import ClipLoader, LoaderConfig

data, out, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
acc = Accelerator(cpu=not torch.cuda.is_available())
loader = ClipLoader(data, LoaderConfig(batch_size=batch, clip_len=3, num_workers=1, loader="cpu"),
                    seed=11, rank=acc.process_index, world_size=acc.num_processes, device=acc.device)
positions, steps = [], 0
for b in loader:
    total = acc.reduce(torch.tensor([b.batch_size], device=acc.device), reduction="sum")
    positions += acc.gather(b.position).tolist()
    steps += 1
acc.wait_for_everyone()
with open(f"{out}/{acc.process_index}.json", "w") as f:
    json.dump({"steps": steps, "positions": positions, "world": acc.num_processes,
               "backend": str(acc.state.backend), "state": loader.state_dict()}, f)
