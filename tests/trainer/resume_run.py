"""A short HSD run that checkpoints every step and resumes from the last checkpoint when one exists.

usage: python resume_run.py MODEL_DIR OUT_DIR MAX_STEPS [SLEEP_PER_STEP]
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from scripted import scripted_trainer  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from hsd.trainer.callbacks import MetricsJsonlCallback  # noqa: E402

model_dir, out, max_steps = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
pause = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0


class Slow(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(pause)


trainer = scripted_trainer(
    model_dir,
    out,
    method="hsd",
    per_device_train_batch_size=8,
    max_steps=max_steps,
    save_strategy="steps",
    save_steps=1,
    callbacks=[MetricsJsonlCallback(out / "metrics.jsonl"), Slow()],
)
resume = any(out.glob("checkpoint-*"))
trainer.train(resume_from_checkpoint=True if resume else None)
print("final step", trainer.state.global_step)
