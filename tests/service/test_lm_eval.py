"""lm-evaluation-harness's `local-completions` model against a real charlm server (slow; skipped
unless lm-eval is installed: `pip install -e '.[bench]'`): a loglikelihood (multiple-choice) task on
names-gpt and a loglikelihood_rolling (perplexity) task on shakespeare-gpt's test split, whose
perplexity must be the model's own: exp(test_loss) on the same text.

lm-eval finds its tokenizer next to the completions URL (/models/NAME/tokenizer_info, /tokenize),
so each model gets base_url http://HOST:PORT/models/NAME/v1/completions. Its rolling windows send
[1 context token] + max_length - 2 scored tokens; charlm keeps a prompt's last block_size tokens, so
max_length = block_size + 1 (127 scored tokens per 128-token request; the manifest's eval scores 128
per block, hence a 0.08% higher perplexity on the whole split).
Run it directly: python -m tests.service.test_lm_eval URL.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

PPL_TASK = """task: charlm_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""
CHOICE_TASK = """task: charlm_names
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: ""
target_delimiter: ""
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
"""
NAMES_DOCS = [
    {"choices": ["emma", "xqzvk"], "gold": 0},
    {"choices": ["zzzqj", "olivia"], "gold": 1},
    {"choices": ["jackson", "qqqqqq"], "gold": 0},
]


def shakespeare_text(chars: int | None) -> tuple[str, float]:
    from training.verify import split_samples

    manifest, samples = split_samples(REPO / "models" / "shakespeare-gpt")
    text = "".join(manifest.vocab[i] for i in samples[0].tolist())
    return text[:chars], manifest.metrics.test_loss


def lm_eval(base: str, model: str, task: str, tasks_dir: Path, out: Path, block_size: int, extra: str = "") -> dict:
    """Run `lm_eval run` with local-completions on `task`; its results for the task."""
    url = f"{base}/models/{model}/v1/completions"
    args = f"model={model},base_url={url},tokenizer_backend=remote,max_length={block_size + 1},max_retries=1{extra}"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "lm_eval", "run", "--model", "local-completions", "--model_args", args]
    cmd += ["--tasks", task, "--include_path", str(tasks_dir), "--output_path", str(out)]
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True, timeout=900)
    result = next(out.rglob("results_*.json"))
    return json.loads(result.read_text())["results"][task]


def write_tasks(tasks_dir: Path, text: str) -> None:
    tasks_dir.mkdir(parents=True, exist_ok=True)
    (tasks_dir / "ppl.jsonl").write_text(json.dumps({"text": text}) + "\n")
    (tasks_dir / "names.jsonl").write_text("".join(json.dumps(d) + "\n" for d in NAMES_DOCS))
    (tasks_dir / "charlm_ppl.yaml").write_text(PPL_TASK.format(data=tasks_dir / "ppl.jsonl"))
    (tasks_dir / "charlm_names.yaml").write_text(CHOICE_TASK.format(data=tasks_dir / "names.jsonl"))


def perplexities(base: str, work: Path, chars: int | None) -> dict[str, float]:
    from training.verify_http import http_split_loss  # noqa: F401  (the same package: the data must resolve)

    text, test_loss = shakespeare_text(chars)
    write_tasks(work / "tasks", text)
    # A stream model has no eos/bos id lm-eval can use (its start, "\n", is id 0, which lm-eval's
    # `bos_token_id or eos_token_id` reads as missing): name the prefix token explicitly.
    prefix = ",custom_prefix_token_id=0"
    ppl = lm_eval(base, "shakespeare-gpt", "charlm_ppl", work / "tasks", work / "out-ppl", 128, prefix)
    names = lm_eval(base, "names-gpt", "charlm_names", work / "tasks", work / "out-names", 16)
    return {
        "byte_perplexity": ppl["byte_perplexity,none"],
        "exp_test_loss": math.exp(test_loss),
        "names_acc": names["acc,none"],
        "chars": len(text),
    }


@pytest.mark.skipif(not __import__("importlib").util.find_spec("lm_eval"), reason="lm-eval is not installed")
def test_lm_eval_local_completions(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    got = perplexities(server.base_url, tmp_path, None)  # the whole test split: ~45 s
    assert got["names_acc"] == 1.0
    # 127 scored characters per window where the eval scores 128: 4.8874 vs exp(test_loss) 4.8838
    assert abs(got["byte_perplexity"] / got["exp_test_loss"] - 1) < 2e-3, got


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(perplexities(sys.argv[1], Path(tmp), None), indent=1))
