"""An offline, deterministic byte-level BPE tokenizer for the tiny driving VLA.

No tokenizer can be downloaded at run time, so one is trained in milliseconds from a fixed corpus of driving
instructions and prompt words. Byte-level BPE can still encode any text, only less compactly.
"""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

UNK_TOKEN = "<unk>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_TOKEN = "<pad>"
IMAGE_TOKEN = "<image>"
# Ids 0..4 in this order (Llama convention for the first three).
SPECIAL_TOKENS = (UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, IMAGE_TOKEN)

_INSTRUCTIONS = (
    "follow the lane",
    "keep the lane",
    "stay in your lane",
    "keep going straight",
    "go straight at the next intersection",
    "turn left at the next intersection",
    "turn right at the next intersection",
    "take the next left",
    "take the next right",
    "change lanes to the left",
    "change lanes to the right",
    "merge into the left lane",
    "merge into the right lane",
    "slow down",
    "speed up",
    "stop",
    "stop at the stop line",
    "stop at the red light",
    "go when the light is green",
    "yield to pedestrians",
    "keep a safe distance to the car in front",
    "follow the car in front",
    "overtake the slow vehicle",
    "park on the right side of the road",
    "pull over and stop",
    "drive carefully, there is a crosswalk ahead",
    "enter the roundabout and take the second exit",
    "leave the highway at the next exit",
    "drive at 30 km/h",
    "keep the speed at 10 m/s",
    "the road curves to the left",
    "the road curves to the right",
)
_PROMPT_WORDS = (
    "USER: ASSISTANT: Instruction: Speed: m/s km/h",
    "You are driving a car. Predict the trajectory and the target speed.",
    "speed waypoints steer throttle brake lane intersection traffic light vehicle pedestrian",
    "0 1 2 3 4 5 6 7 8 9 0.0 0.5 1.0 1.5 2.0 2.5 3.0 5.0 7.5 10.0 12.5 15.0 20.0",
)
CORPUS: tuple[str, ...] = _INSTRUCTIONS + _PROMPT_WORDS


def build_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE on `CORPUS` and wrap it for transformers.

    `vocab_size` is an upper bound: the small corpus may run out of merges first, so use `len(tokenizer)` as
    the model's vocabulary. Encoding prepends `<s>`; `<image>` is a single special token (`tokenizer.image_token`).
    The result depends only on `vocab_size` and `CORPUS`, so it is identical across calls and processes.
    """
    minimum = 256 + len(SPECIAL_TOKENS)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < minimum:
        raise ValueError(f"vocab_size must be an integer >= {minimum} (256 bytes + special tokens), got {vocab_size!r}")
    backend = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer=trainer)
    bos_id = backend.token_to_id(BOS_TOKEN)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A $B:1", special_tokens=[(BOS_TOKEN, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
