"""Rebuild the shipped tokenizer: `python -m vllm_sim.tokenizer.build [OUT_DIR]`.

Trains a byte-level BPE (GPT-2 style pre-tokenizer, ~8k vocab) on text generated from a fixed word list
with a seeded RNG, so the same inputs give the same tokenizer.json with no download. The corpus mixes
English function words, technical vocabulary and digits so real prompts tokenize to plausible lengths
(roughly 1.3 tokens per English word, as with production BPE vocabularies).
"""
from __future__ import annotations

import json
import os
import random
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

VOCAB_SIZE = 8192
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
SEED = 20240611

_WORDS = """
the of and to a in is it you that he was for on are with as I his they be at one have this from or had
by not word but what some we can out other were all there when up use your how said an each she which do
their time if will way about many then them write would like so these her long make thing see him two has
look more day could go come did number sound no most people my over know water than call first who may down
side been now find any new work part take get place made live where after back little only round man year
came show every good me give our under name very through just form sentence great think say help low line
differ turn cause much mean before move right boy old too same tell does set three want air well also play
small end put home read hand port large spell add even land here must big high such follow act why ask men
change went light kind off need house picture try us again animal point mother world near build self earth
father head stand own page should country found answer school grow study still learn plant cover food sun
four between state keep eye never last let thought city tree cross farm hard start might story saw far sea
draw left late run while press close night real life few north open seem together next white children begin
got walk example ease paper group always music those both mark often letter until mile river car feet care
second book carry took science eat room friend began idea fish mountain stop once base hear horse cut sure
watch color face wood main enough plain girl usual young ready above ever red list though feel talk bird
soon body dog family direct pose leave song measure door product black short numeral class wind question
happen complete ship area half rock order fire south problem piece told knew pass since top whole king space
heard best hour better true during hundred five remember step early hold west ground interest reach fast
verb sing listen six table travel less morning ten simple several vowel toward war lay against pattern slow
center love person money serve appear road map rain rule govern pull cold notice voice unit power town fine
certain fly fall lead cry dark machine note wait plan figure star box noun field rest correct able pound
done beauty drive stood contain front teach week final gave green oh quick develop ocean warm free minute
strong special mind behind clear tail produce fact street inch multiply nothing course stay wheel full force
blue object decide surface deep moon island foot system busy test record boat common gold possible plane
model server request token cache block prefix decode prefill latency throughput kubernetes gateway endpoint
inference route router pod cluster scheduler queue memory bandwidth compute tensor layer attention weight
batch sequence stream response error metric label health ready python function class return value string
integer float list dictionary import module package config network transfer replica deploy service user
assistant system message content customer support order account invoice payment shipping refund policy
please thank hello question answer explain summarize translate describe analyze compare write code review
""".split()

_PUNCT = [".", ",", "?", "!", ":", ";", " -", "'s", "(", ")", "\"", "\n", "\n\n"]


_ONSETS = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
           "br", "ch", "cl", "dr", "gr", "pl", "pr", "sh", "st", "str", "th", "tr"]
_NUCLEI = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "io", "ou", "y"]
_CODAS = ["", "", "n", "r", "s", "t", "l", "m", "nd", "ng", "st", "ck", "x"]


def pseudo_words(rng: random.Random, n: int) -> list[str]:
    """Invented words give the BPE rarer subword material, so the vocabulary fills to VOCAB_SIZE."""
    out = []
    for _ in range(n):
        out.append("".join(rng.choice(_ONSETS) + rng.choice(_NUCLEI) + rng.choice(_CODAS)
                           for _ in range(rng.randint(1, 3))))
    return out


def corpus(n_sentences: int = 80000, seed: int = SEED):
    rng = random.Random(seed)
    rare = pseudo_words(rng, 6000)
    for _ in range(n_sentences):
        n = rng.randint(4, 18)
        words = [rng.choice(_WORDS) if rng.random() < 0.8 else rng.choice(rare) for _ in range(n)]
        if rng.random() < 0.5:
            words[0] = words[0].capitalize()
        if rng.random() < 0.15:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 99999)))
        if rng.random() < 0.1:
            words.insert(rng.randrange(len(words)), rng.choice(["{", "}", "[", "]", "=", "==", "->", "()", "#"]))
        text = " ".join(words)
        yield text + rng.choice(_PUNCT)


def build() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    return tok


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    out = argv[0] if argv else os.path.dirname(os.path.abspath(__file__))
    os.makedirs(out, exist_ok=True)
    tok = build()
    tok.save(os.path.join(out, "tokenizer.json"), pretty=False)
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "add_bos_token": False,
        "model_max_length": 131072,
        "chat_template": open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "chat_template.jinja")).read(),
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    print(f"wrote {out}/tokenizer.json (vocab {tok.get_vocab_size()})")


if __name__ == "__main__":
    main()
