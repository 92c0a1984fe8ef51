"""One HSD training step under `accelerate launch`; writes the chosen peers and the logged loss as JSON.

usage: accelerate launch --cpu --num_processes N dist_step.py MODEL_DIR OUT_JSON PER_DEVICE_BATCH
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from scripted import GROUP, arithmetic_dataset, exact_answer_reward, make_rollout_func  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from hsd import HSDConfig, HSDTrainer  # noqa: E402

model_dir, out_path, per_device = sys.argv[1], sys.argv[2], int(sys.argv[3])
tokenizer = AutoTokenizer.from_pretrained(model_dir)
args = HSDConfig(
    output_dir=str(Path(out_path).parent / "run"),
    method="hsd",
    per_device_train_batch_size=per_device,
    num_generations=GROUP,
    max_completion_length=16,
    max_steps=1,
    report_to=[],
    use_cpu=True,
    save_strategy="no",
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
)
trainer.train()
if trainer.accelerator.is_main_process:
    loss = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
    Path(out_path).write_text(
        json.dumps(
            {
                "peers": trainer.last_peers,
                "loss": loss,
                "processes": trainer.accelerator.num_processes,
            }
        )
    )
