"""A tiny random GPT-2 built on the spot, for tests and benchmarks that need a real model fast."""

from pathlib import Path

# The name the tiny model has in tests' catalogs.
TINY = "tiny-gpt2"

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_CORPUS = """
The coordinator matches inference jobs with miners that serve the model a client asked for.
A miner claims a job, runs the model, returns the result and is paid from escrow.
Receipts are signed with Ed25519 and sealed into blocks of a Merkle ledger.
Clients submit prompts; workers generate tokens and stream them back as they are produced.
"""


def build_tiny_gpt2(directory: Path, *, seed: int = 0, layers: int = 2, width: int = 32, positions: int = 2048) -> Path:
    """Write a 2-layer GPT-2 with a byte-level BPE tokenizer (and a chat template) to ``directory``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)

    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=positions, n_embd=width, n_layer=layers, n_head=2,
        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
    )  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(directory)
    return directory
