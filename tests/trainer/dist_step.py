"""One HSD training step under `accelerate launch`; writes the chosen peers and the logged loss as JSON.

usage: accelerate launch --cpu --num_processes N dist_step.py MODEL_DIR OUT_JSON PER_DEVICE_BATCH
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from scripted import scripted_trainer  # noqa: E402

model_dir, out_path, per_device = sys.argv[1], sys.argv[2], int(sys.argv[3])
trainer = scripted_trainer(
    model_dir, Path(out_path).parent / "run", method="hsd", per_device_train_batch_size=per_device
)
trainer.train()
if trainer.accelerator.is_main_process:
    loss = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    Path(out_path).write_text(
        json.dumps(
            {
                "peers": list(trainer.last_plan.peers),
                "loss": loss,
                "processes": trainer.accelerator.num_processes,
            }
        )
    )
