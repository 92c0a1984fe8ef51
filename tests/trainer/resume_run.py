"""A short HSD run that checkpoints every step and resumes from the last checkpoint when one exists.

usage: python resume_run.py MODEL_DIR OUT_DIR MAX_STEPS [SLEEP_PER_STEP]
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from scripted import GROUP, arithmetic_dataset, exact_answer_reward, make_rollout_func  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402

from hsd import HSDConfig, HSDTrainer  # noqa: E402
from hsd.trainer.callbacks import MetricsJsonlCallback  # noqa: E402

model_dir, out, max_steps = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
pause = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0


class Slow(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(pause)


tokenizer = AutoTokenizer.from_pretrained(model_dir)
args = HSDConfig(
    output_dir=str(out),
    method="hsd",
    per_device_train_batch_size=8,
    num_generations=GROUP,
    max_completion_length=16,
    max_steps=max_steps,
    report_to=[],
    use_cpu=True,
    save_strategy="steps",
    save_steps=1,
    seed=0,
    logging_steps=1,
    learning_rate=1e-2,
)
trainer = HSDTrainer(
    AutoModelForCausalLM.from_pretrained(model_dir),
    reward_funcs=exact_answer_reward,
    args=args,
    train_dataset=arithmetic_dataset(4),
    processing_class=tokenizer,
    rollout_func=make_rollout_func(tokenizer),
    callbacks=[MetricsJsonlCallback(out / "metrics.jsonl"), Slow()],
)
resume = any(out.glob("checkpoint-*"))
trainer.train(resume_from_checkpoint=True if resume else None)
print("final step", trainer.state.global_step)
