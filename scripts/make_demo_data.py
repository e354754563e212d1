"""Synthesise the bundled demo dataset: spoken e-banking requests for MInDS-14's 14 intents.

MInDS-14 (PolyAI) is a set of recorded phone calls in which customers ask an e-banking
assistant for one of 14 things ("what's my balance", "I lost my card", ...). Its audio
cannot be shipped inside this package, so this script makes a small stand-in with the
same shape: the same 14 intent labels, 8 kHz mono 16-bit FLAC clips, a few seconds each,
many speakers, several phrasings per intent.

How a clip is made:
  1. espeak-ng speaks one phrasing of the intent with one of 128 voices (an English
     accent plus a voice variant, each with its own base rate and pitch); every clip
     jitters the rate (-s) and the pitch (-p) a little around the voice's base.
  2. espeak-ng's 22050 Hz output is trimmed of its own edge silence and resampled to
     8000 Hz with soxr (phone-band audio, like MInDS-14).
  3. A short random silence is put before and after, a random gain is applied, and
     light white or pink noise is added at a random SNR of 20-35 dB, so no clip is
     digitally clean and loudness differs between clips as it does between callers.

Counts: 128 voices x 7 clips = 896 clips (MInDS-14 en-US has 563). Like MInDS-14's callers, each
voice says only a few things: one clip for each of 7 of the 14 intents. Many voices with few clips each,
rather than few voices with many clips: a classifier has to generalise to callers it has not heard, and
that depends on how many distinct voices it trained on. Measured with audioclf's default recipe and the
Whisper tiny.en encoder on voice-disjoint test splits: 8 voices x 4 clips per intent, then 16 voices x 2,
reached ~0.6-0.8 on the held-out voices; 64 voices x 7 clips, 0.78-0.82 on 16 unseen voices; 128 voices,
0.96-0.98 on 32 unseen voices.

Size: the package budget is 15 MB. Phone-band speech with light noise costs FLAC about 12 bits a sample
at 16-bit precision (896 clips: 27.7 MB), so every clip is rounded to SIGNIFICANT_BITS = 10 bits before
it is written as 16-bit FLAC: the low 6 bits are zero, FLAC stores such "wasted bits" for free, and the
896 clips come to about 12 MB. The rounding noise lies 31-41 dB below the speech, below the added
background noise (SNR 20-35 dB), like the coarse quantisation of a phone line.

The voice design (see design_voices()):
  - 8 English accents x 16 voices each; within each accent 8 female- and 8 male-sounding voices.
  - Variants: 12 female-sounding (f1-f5, linda, belinda, Andrea, steph, aunty, Alicia, anika)
    and 12 male-sounding (m1-m8, klatt, klatt2, klatt3, klatt4); an accent's 8 female (8 male)
    voices have 8 different variants, and every variant is used by 5 or 6 accents, so all 128
    (accent, variant) pairs are different. Whisper- and croak-like variants (hardly voiced),
    novelty variants and MBROLA voices are left out.
  - Base rates (135-185 wpm) and base pitches (28-72 on espeak's 0-99 scale) are spread evenly
    over each sex's 32 voices in seeded random order.
  - Intents: the 8 voices of one accent and sex say 4 complementary pairs of intent sets S, not-S, T,
    not-T, U, not-U, W, not-W (random 7-of-14 sets, no set twice), so every intent is said exactly 4 times
    per (accent, sex), i.e. by 64 different voices (32 female, 32 male, 8 per accent). Voices come in
    16 rounds of 8 (v001-v008, v009-v016, ...): each round has every accent once, 4 female and 4 male, and
    the accents alternate sex from round to round; v001-v064 and v065-v128 each have every intent 32 times.
  - Each intent's 12 phrasings are spread over its 64 clips as evenly as possible (5 or 6 each).

Everything random comes from numpy generators seeded with SEED and the voice and intent
indices, and espeak-ng is deterministic, so a rerun reproduces the same dataset.

Output (default src/audioclf/demo_data/minds14_synth/):
  clips/<voice>/<intent>.flac
  manifest.csv   columns path,label,voice,text; path is relative to the manifest; sorted by path
  README.md      what this is and how it was made

The dataset is built in a temporary sibling folder and renamed into place at the end,
so an interrupted run never leaves a half-written dataset behind.

Usage:
  python scripts/make_demo_data.py [--output DIR]
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT_DIR = REPO_ROOT / "src" / "audioclf" / "demo_data" / "minds14_synth"

SEED = 20240614  # fixed: changing it changes every clip
VOICES_PER_ACCENT_AND_SEX = 8  # x 8 accents x 2 sexes = 128 voices
INTENTS_PER_VOICE = 7  # one clip each: 128 x 7 = 896 clips, about 12 MB of the 15 MB budget
SIGNIFICANT_BITS = 10  # clips are rounded to this many bits (of 16) so that FLAC stores them in half the space
BASE_RATE_WPM = (135, 185)  # voices' base rates are spread evenly over this range
BASE_PITCH = (28, 72)  # voices' base pitches (espeak-ng -p, 0-99) are spread evenly over this range

ESPEAK_SAMPLING_RATE_HZ = 22_050  # what espeak-ng writes to --stdout
TARGET_SAMPLING_RATE_HZ = 8_000  # MInDS-14 is 8 kHz telephone audio
RESAMPLE_QUALITY = "HQ"  # the same soxr preset audioclf.audio uses

RATE_JITTER_FRACTION = 0.07  # each clip's words-per-minute within +-7 % of the voice's base
PITCH_JITTER = 6  # each clip's espeak pitch (0-99 scale) within +-6 of the voice's base
EDGE_TRIM_THRESHOLD_FRACTION = 0.01  # espeak pads ~0.2 s of silence; cut below 1 % of peak
LEAD_SILENCE_SECONDS = (0.05, 0.20)  # random silence before speech; short, because noise costs bytes
TRAIL_SILENCE_SECONDS = (0.05, 0.20)  # random silence after speech
# Random gain: the speech level of quiet to loud phone callers (quieter levels also keep the FLAC files smaller).
SPEECH_RMS_DBFS = (-34.0, -24.0)
NOISE_SNR_DB = (20.0, 35.0)  # light background noise, relative to the speech RMS
PINK_NOISE_FLOOR_HZ = 50.0  # pink noise is shaped 1/f only above this
PEAK_CEILING = 0.98  # never clip when quantising to 16 bit

INTENTS = [
    "abroad",
    "address",
    "app_error",
    "atm_limit",
    "balance",
    "business_loan",
    "card_issues",
    "cash_deposit",
    "direct_debit",
    "freeze",
    "high_value_payment",
    "joint_account",
    "latest_transactions",
    "pay_bill",
]

# 12 phrasings per intent, written as a bank customer would say them on the phone.
# They vary in wording on purpose: a classifier should learn the intent, not one keyword.
PHRASINGS = {
    "abroad": [
        "I'm going on holiday to Spain next week, will my card work over there?",
        "Can I use my debit card when I'm travelling overseas?",
        "I need to let the bank know I'll be in France for two weeks.",
        "Are there any fees for paying with my card in another country?",
        "How do I get cash out when I'm abroad?",
        "I'm flying to Canada tomorrow, do I need to tell you before I go?",
        "My card got declined at a shop in Italy.",
        "What exchange rate do you use when I buy things in a foreign currency?",
        "I'd like to put a travel notice on my account.",
        "Will I be charged for using a cash machine outside the country?",
        "I'm working in Germany for a few months, can I keep using my card there?",
        "Can I order some euros before my trip?",
    ],
    "address": [
        "I've moved house and need to update my address.",
        "How do I change the address on my account?",
        "I'd like to give you my new home address.",
        "Can you update my postal details, please?",
        "My statements are still going to my old flat.",
        "We're relocating next month, how do I tell the bank where we live now?",
        "I need to change where my letters get sent.",
        "What's the process for updating my residential address?",
        "I recently moved to a new city, can you change my details?",
        "Please send my new card to where I live now, not the old place.",
        "Can I change my address online or do I have to come into a branch?",
        "The address you have on file for me is out of date.",
    ],
    "app_error": [
        "The mobile app keeps crashing when I try to log in.",
        "Your app won't let me sign in, it just shows an error.",
        "I can't open the banking app on my phone since the update.",
        "Every time I try to make a transfer in the app it gets stuck loading.",
        "The app says something went wrong and to try again later.",
        "I'm getting an error message on the banking application.",
        "Why does the app log me out every few seconds?",
        "My fingerprint login on the app has stopped working.",
        "The app isn't showing any of my accounts.",
        "I downloaded the new version of the app and now nothing works.",
        "There's a bug in your mobile banking app.",
        "The app shows a blank white screen when I open it.",
    ],
    "atm_limit": [
        "What's the most cash I can take out of a cash machine in one day?",
        "Can I increase my daily withdrawal limit?",
        "The ATM wouldn't give me more than three hundred dollars.",
        "How much money can I withdraw from an ATM?",
        "I need to take out a lot of cash today, can you raise my limit?",
        "Is there a maximum on how much I can get from the cash point?",
        "I'd like to change my ATM limit.",
        "The machine said I'd gone over my withdrawal limit.",
        "What is the daily limit on my debit card at cash machines?",
        "Can you lower the amount I'm allowed to withdraw each day?",
        "Why can I only take out five hundred a day?",
        "How do I get a higher cash withdrawal allowance?",
    ],
    "balance": [
        "I'd like to check how much money is in my account.",
        "What's my current balance?",
        "Can you tell me how much I have in my checking account?",
        "How much is left in my savings?",
        "I want to know my account balance, please.",
        "Could you tell me what funds I have available?",
        "How much money do I have right now?",
        "Is my account overdrawn at the moment?",
        "What's the available balance on my current account?",
        "I need to know if I've got enough money to pay the rent.",
        "Can I hear my balance?",
        "Please read me the amount that's in my account.",
    ],
    "business_loan": [
        "I'd like to apply for a loan for my business.",
        "What kind of financing do you offer to small companies?",
        "I run a bakery and need money to buy new equipment.",
        "How do I borrow money to expand my company?",
        "What are your interest rates on business loans?",
        "I'm starting a new company and need some funding.",
        "Can my limited company get a loan from you?",
        "I need capital for my shop, what are my options?",
        "What documents do I need to apply for commercial lending?",
        "Could I borrow money to buy a van for my plumbing firm?",
        "I'm self-employed and want to borrow twenty thousand for the business.",
        "Do you offer start-up loans for entrepreneurs?",
    ],
    "card_issues": [
        "My card isn't working in shops.",
        "I've lost my debit card.",
        "My bank card was stolen yesterday.",
        "The chip on my card is damaged.",
        "My card keeps getting declined even though I have money.",
        "I haven't received my new card in the post.",
        "The cash machine swallowed my card.",
        "My card has expired and I need a replacement.",
        "Contactless payments aren't working on my card.",
        "I forgot my PIN number.",
        "My credit card has snapped in half.",
        "I need a new card, mine has stopped working.",
    ],
    "cash_deposit": [
        "How can I pay cash into my account?",
        "I want to deposit some cash.",
        "Can I put money into my account at the post office?",
        "Where's the nearest branch where I can deposit cash?",
        "I've got some notes and coins I want to pay in.",
        "Can I make a cash deposit at an ATM?",
        "Is there a limit on how much cash I can pay in?",
        "I'd like to pay in some money I got for my birthday.",
        "How long does it take for a cash deposit to show up?",
        "Can someone else deposit cash into my account for me?",
        "I paid in cash yesterday but it hasn't appeared yet.",
        "What do I need to bring to pay cash in at the counter?",
    ],
    "direct_debit": [
        "I'd like to set up a direct debit.",
        "How do I cancel a direct debit?",
        "A company took a payment from my account that I didn't authorise.",
        "Can I change the date my monthly payment comes out?",
        "I want to stop my gym from taking money from my account.",
        "There's a regular payment going out that I don't recognise.",
        "How do I set up an automatic payment for my electricity?",
        "Can you tell me which direct debits I have?",
        "My phone company has taken the wrong amount by direct debit.",
        "I need to cancel a recurring payment to my old insurance company.",
        "Can I get a refund on a direct debit taken by mistake?",
        "I want my TV licence to come out automatically every month.",
    ],
    "freeze": [
        "I want to freeze my card.",
        "Can you block my account right away?",
        "I think someone has been using my card, please stop it.",
        "How do I temporarily lock my debit card?",
        "Please put a hold on my account.",
        "I need to suspend my card until I find my wallet.",
        "Can I freeze my account while I'm away?",
        "Someone has hacked my online banking, stop all payments.",
        "I want to unfreeze my card now that I've found it.",
        "Please disable my card immediately.",
        "How do I stop all transactions on my account?",
        "Can you lock my account, I think it's been compromised.",
    ],
    "high_value_payment": [
        "I need to make a large payment to buy a car.",
        "How do I transfer fifty thousand pounds?",
        "I'm buying a house and need to send the deposit to my solicitor.",
        "What's the maximum amount I can transfer in one go?",
        "My large transfer has been blocked.",
        "I need to send a big sum of money to my builder.",
        "Can I pay more than ten thousand dollars online?",
        "Is there a limit on how much I can send by bank transfer?",
        "I'd like to make a high value payment today.",
        "How can I send a payment of twenty five thousand euros?",
        "Why was my payment for the new car stopped?",
        "I want to move a large amount of money to another bank.",
    ],
    "joint_account": [
        "I'd like to open a joint account with my partner.",
        "How can I add my wife to my account?",
        "Can my husband and I share a bank account?",
        "I want to remove my ex from our joint account.",
        "What do we need to open an account together?",
        "Can I open an account in both my name and my son's?",
        "My girlfriend and I want a shared account for the bills.",
        "How do I convert my account to a joint one?",
        "Can two people have access to the same account?",
        "My mother wants to be added as a second account holder.",
        "We're getting married and want to combine our accounts.",
        "How do I take my name off a joint account?",
    ],
    "latest_transactions": [
        "Can you tell me my most recent transactions?",
        "What were the last few payments out of my account?",
        "I'd like to see what I've spent this week.",
        "Has my salary gone in yet?",
        "Can you read out my last five purchases?",
        "I want to check the recent activity on my account.",
        "Did my payment to the landlord go through yesterday?",
        "Show me my latest transactions, please.",
        "What came out of my account today?",
        "Can I get a list of my recent card payments?",
        "I want to check whether a refund has arrived.",
        "What was the last money that went in or out of my account?",
    ],
    "pay_bill": [
        "I want to pay my electricity bill.",
        "How do I pay a bill from my account?",
        "Can I pay my credit card bill now?",
        "I need to pay my water bill before Friday.",
        "I'd like to settle my phone bill.",
        "How can I add a new payee to pay my gas company?",
        "Can you help me pay my council tax?",
        "I want to make a payment to my internet provider.",
        "How do I pay an invoice online?",
        "I'd like to pay my rent from my account.",
        "Can I schedule a bill payment for next week?",
        "I need to pay a parking fine.",
    ],
}


# espeak-ng language voices for the English accents used. "en" is British English (Great Britain):
# it must be spelled "en", because espeak-ng 1.51 silently drops the variant from "en-gb+<variant>".
ACCENTS = {
    "en-us": "American",
    "en": "British (Great Britain)",
    "en-gb-scotland": "Scottish",
    "en-029": "Caribbean",
    "en-gb-x-rp": "British (Received Pronunciation)",
    "en-us-nyc": "American (New York City)",
    "en-gb-x-gbclan": "British (Lancaster)",
    "en-gb-x-gbcwmd": "British (West Midlands)",
}


# Variants that sound clearly female or male and stay intelligible (median F0 of the test sentence
# at -p 50: female 175-265 Hz, male 90-115 Hz). Left out: whisper, whisperf, croak and other
# barely voiced variants (hard to understand), novelty and robot variants (echo-heavy, "Demonic",
# "UniRobot", ...), near-duplicates (steph2 and steph3 sound like steph), and the MBROLA voices
# (mb/...; extra packages, and not on every system).
FEMALE_VARIANTS = ["f1", "f2", "f3", "f4", "f5", "linda", "belinda", "Andrea", "steph", "aunty", "Alicia", "anika"]
MALE_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "klatt", "klatt2", "klatt3", "klatt4"]
SEXES = ("female", "male")


@dataclass(frozen=True)
class Voice:
    voice_id: str  # folder name and manifest value
    accent: str  # espeak-ng language voice, a key of ACCENTS
    variant: str  # espeak-ng voice variant (voices/!v/<variant>)
    base_rate_wpm: int  # espeak-ng -s, words per minute
    base_pitch: int  # espeak-ng -p, 0-99
    sounds: str  # "female" or "male": how the variant sounds
    intents: tuple[str, ...]  # the intents this voice says, one clip each, in INTENTS order

    @property
    def espeak_voice(self) -> str:
        """The espeak-ng -v argument."""
        return f"{self.accent}+{self.variant}"


def pick_least_used(rng: np.random.Generator, times_used: np.ndarray, count: int) -> list[int]:
    """`count` distinct indices, preferring the least used so far (ties broken at random); counts them as used."""
    shuffled = rng.permutation(len(times_used))
    least_used_first = shuffled[np.argsort(times_used[shuffled], kind="stable")]
    chosen = [int(index) for index in least_used_first[:count]]
    times_used[chosen] += 1
    return chosen


def design_voices() -> list[Voice]:
    """The 128 voices: accent, variant, base rate and pitch, and which 7 intents each says (seeded).

    Voice n (0-63) is in round n // 8 and has accent n % 8, so every round of 8 has each accent once;
    it is female when accent index + round is even, so each round has 4 female and 4 male voices and an
    accent alternates sex from round to round. An (accent, sex) group is thus 8 voices in alternate rounds.
    """
    rng = np.random.default_rng([SEED, 64])  # the voice design's own stream, apart from the clips'
    accents = list(ACCENTS)
    rounds = VOICES_PER_ACCENT_AND_SEX * len(SEXES)
    voice_count = len(accents) * rounds
    pools = {"female": FEMALE_VARIANTS, "male": MALE_VARIANTS}
    variant_uses = {sex: np.zeros(len(pools[sex]), dtype=int) for sex in SEXES}
    # Per (accent, sex): distinct variants, each variant used by as equal a number of accents as possible.
    variants = {}
    intent_sets = {}
    for accent in accents:
        for sex in SEXES:
            picked = pick_least_used(rng, variant_uses[sex], VOICES_PER_ACCENT_AND_SEX)
            variants[accent, sex] = [pools[sex][index] for index in picked]
            # Complementary pairs of intent sets (S, not-S, T, not-T, ...): every intent equally often in the group.
            every = set(range(len(INTENTS)))
            sets: list[set[int]] = []
            while len(sets) < VOICES_PER_ACCENT_AND_SEX:
                chosen = set(rng.permutation(len(INTENTS))[:INTENTS_PER_VOICE].tolist())
                if chosen not in sets and every - chosen not in sets:  # no two voices of the group say one set
                    sets += [chosen, every - chosen]
            intent_sets[accent, sex] = sets
    # Base rates and pitches: evenly spread over each sex's 64 voices, in random order (independently).
    per_sex = voice_count // len(SEXES)
    rates = {sex: rng.permutation(np.round(np.linspace(*BASE_RATE_WPM, per_sex)).astype(int)) for sex in SEXES}
    pitches = {sex: rng.permutation(np.round(np.linspace(*BASE_PITCH, per_sex)).astype(int)) for sex in SEXES}

    voices = []
    slot = {(accent, sex): 0 for accent in accents for sex in SEXES}
    sex_count = {sex: 0 for sex in SEXES}
    for number in range(voice_count):
        round_index, accent_index = divmod(number, len(accents))
        accent = accents[accent_index]
        sex = SEXES[(accent_index + round_index) % 2]
        group_slot = slot[accent, sex]
        slot[accent, sex] += 1
        sex_slot = sex_count[sex]
        sex_count[sex] += 1
        voices.append(
            Voice(
                voice_id=f"v{number + 1:03d}",
                accent=accent,
                variant=variants[accent, sex][group_slot],
                base_rate_wpm=int(rates[sex][sex_slot]),
                base_pitch=int(pitches[sex][sex_slot]),
                sounds=sex,
                intents=tuple(INTENTS[index] for index in sorted(intent_sets[accent, sex][group_slot])),
            )
        )
    return voices


def check_design(voices: list[Voice]) -> None:
    """Fail unless the voice design has the counts the README promises."""
    ids = [voice.voice_id for voice in voices]
    if ids != [f"v{number:03d}" for number in range(1, len(voices) + 1)]:
        raise ValueError("voice ids are not v001, v002, ... in order")
    if len({(voice.accent, voice.variant) for voice in voices}) != len(voices):
        raise ValueError("two voices share an accent and a variant")
    for accent in ACCENTS:
        for sex in SEXES:
            group = [voice for voice in voices if voice.accent == accent and voice.sounds == sex]
            if len(group) != VOICES_PER_ACCENT_AND_SEX:
                raise ValueError(f"{accent}/{sex}: {len(group)} voices")
    expected_per_intent = len(voices) * INTENTS_PER_VOICE // len(INTENTS)
    for voice in voices:
        if voice.accent not in ACCENTS:
            raise ValueError(f"{voice.voice_id}: unknown accent {voice.accent!r}")
        if len(set(voice.intents)) != INTENTS_PER_VOICE or not set(voice.intents) <= set(INTENTS):
            raise ValueError(f"{voice.voice_id}: intents {voice.intents}")
    for intent in INTENTS:
        speakers = [voice.voice_id for voice in voices if intent in voice.intents]
        if len(speakers) != expected_per_intent:
            raise ValueError(f"{intent}: said by {len(speakers)} voices, expected {expected_per_intent}")


VOICES = design_voices()


def speak(text: str, espeak_voice: str, rate_wpm: int, pitch: int) -> np.ndarray:
    """espeak-ng's float waveform at ESPEAK_SAMPLING_RATE_HZ."""
    command = ["espeak-ng", "-v", espeak_voice, "-s", str(rate_wpm), "-p", str(pitch), "--stdout", text]
    wav_bytes = subprocess.run(command, check=True, capture_output=True).stdout
    samples, sampling_rate = sf.read(io.BytesIO(wav_bytes), dtype="float64")
    if sampling_rate != ESPEAK_SAMPLING_RATE_HZ:
        raise RuntimeError(f"espeak-ng wrote {sampling_rate} Hz, expected {ESPEAK_SAMPLING_RATE_HZ} Hz")
    return samples


def check_voices() -> None:
    """Fail if espeak-ng would not speak the 128 voices as 128 different voices.

    espeak-ng falls back silently: an unknown variant, or any variant after "en-gb", is dropped,
    and an unknown language voice is replaced by a default. So speak one test sentence with each
    accent alone (8 calls) and with each full voice at one fixed rate and pitch (128 calls), and
    require every accent, and every voice, to sound different; a voice that sounds like its bare
    accent has lost its variant. Comparison is by hashing the samples, so it is linear, not pairwise.
    """
    test_sentence = "Could you tell me my balance, please?"

    def fingerprint(espeak_voice: str) -> bytes:
        return speak(test_sentence, espeak_voice, 160, 50).tobytes()

    accent_audio = {accent: fingerprint(accent) for accent in ACCENTS}
    if len(set(accent_audio.values())) != len(ACCENTS):
        raise RuntimeError("espeak-ng speaks some of the accents identically; is one of them missing?")
    voice_audio = {}
    for voice in VOICES:
        voice_audio[voice.voice_id] = fingerprint(voice.espeak_voice)
        if voice_audio[voice.voice_id] == accent_audio[voice.accent]:
            raise RuntimeError(f"{voice.voice_id}: espeak-ng ignored the variant in {voice.espeak_voice!r}")
    if len(set(voice_audio.values())) != len(VOICES):
        raise RuntimeError("espeak-ng speaks some of the voices identically")


def trim_edges(samples: np.ndarray) -> np.ndarray:
    """Cut espeak-ng's own leading/trailing silence so the added silence is the only one."""
    threshold = EDGE_TRIM_THRESHOLD_FRACTION * np.max(np.abs(samples))
    loud = np.nonzero(np.abs(samples) > threshold)[0]
    return samples[loud[0] : loud[-1] + 1]


def make_noise(rng: np.random.Generator, length: int) -> np.ndarray:
    """Unit-RMS white or pink noise (pink: white shaped by 1/sqrt(f) in the frequency domain)."""
    white = rng.standard_normal(length)
    if rng.random() < 0.5:
        noise = white
    else:
        spectrum = np.fft.rfft(white)
        frequencies_hz = np.fft.rfftfreq(length, d=1.0 / TARGET_SAMPLING_RATE_HZ)
        # Flat below PINK_NOISE_FLOOR_HZ: a true 1/f slope puts most energy in inaudible rumble.
        spectrum = spectrum / np.sqrt(np.maximum(frequencies_hz, PINK_NOISE_FLOOR_HZ))
        spectrum[0] = 0.0  # no DC offset
        noise = np.fft.irfft(spectrum, n=length)
    return noise / np.sqrt(np.mean(noise**2))


def db_to_amplitude(decibels: float) -> float:
    return 10.0 ** (decibels / 20.0)


def render_clip(rng: np.random.Generator, voice: Voice, text: str) -> np.ndarray:
    """One finished clip at TARGET_SAMPLING_RATE_HZ, float in [-1, 1]."""
    rate_wpm = round(voice.base_rate_wpm * (1.0 + rng.uniform(-RATE_JITTER_FRACTION, RATE_JITTER_FRACTION)))
    pitch = int(np.clip(voice.base_pitch + rng.integers(-PITCH_JITTER, PITCH_JITTER + 1), 0, 99))
    speech = trim_edges(speak(text, voice.espeak_voice, rate_wpm, pitch))
    speech = soxr.resample(speech, ESPEAK_SAMPLING_RATE_HZ, TARGET_SAMPLING_RATE_HZ, quality=RESAMPLE_QUALITY)

    speech_rms = np.sqrt(np.mean(speech**2))
    speech = speech * (db_to_amplitude(rng.uniform(*SPEECH_RMS_DBFS)) / speech_rms)

    lead_samples = round(rng.uniform(*LEAD_SILENCE_SECONDS) * TARGET_SAMPLING_RATE_HZ)
    trail_samples = round(rng.uniform(*TRAIL_SILENCE_SECONDS) * TARGET_SAMPLING_RATE_HZ)
    clip = np.concatenate([np.zeros(lead_samples), speech, np.zeros(trail_samples)])

    # Noise level is set from the speech RMS (not the padded clip's), so the SNR is the one a listener hears.
    speech_rms = np.sqrt(np.mean(speech**2))
    noise_rms = speech_rms / db_to_amplitude(rng.uniform(*NOISE_SNR_DB))
    clip = clip + noise_rms * make_noise(rng, len(clip))

    peak = np.max(np.abs(clip))
    if peak > PEAK_CEILING:
        clip = clip * (PEAK_CEILING / peak)
    steps = 2 ** (SIGNIFICANT_BITS - 1)  # per unit of amplitude: 16-bit samples become multiples of 2**(16 - bits)
    return np.round(clip * steps) / steps


def readme_text(clip_count: int, espeak_version: str) -> str:
    voice_rows = "\n".join(
        f"| {voice.voice_id} | `{voice.espeak_voice}` | {ACCENTS[voice.accent]} | {voice.sounds} "
        f"| {voice.base_rate_wpm} | {voice.base_pitch} | {', '.join(voice.intents)} |"
        for voice in VOICES
    )
    phrasing_count = len(next(iter(PHRASINGS.values())))
    voices_per_intent = len(VOICES) * INTENTS_PER_VOICE // len(INTENTS)
    return f"""# minds14_synth: a synthetic stand-in for MInDS-14

Spoken e-banking requests for the 14 intents of [MInDS-14](https://huggingface.co/datasets/PolyAI/minds14)
(PolyAI), synthesised with espeak-ng so that audioclf can ship a small demo dataset of its own.
It has MInDS-14's shape, not its content: same labels, 8 kHz mono FLAC, a few seconds per clip,
many speakers with a few clips each, several phrasings per intent; but the speakers are a speech
synthesiser, not real callers.

## Contents

- `manifest.csv`: columns `path` (relative to this folder), `label` (intent), `voice` (v001-v{len(VOICES):03d}), `text` (what is said); sorted by path.
- `clips/<voice>/<intent>.flac`: 8000 Hz, mono, FLAC 16-bit, rounded to {SIGNIFICANT_BITS} significant bits
  (the low {16 - SIGNIFICANT_BITS} bits are zero, which FLAC stores for free; the rounding noise is below the added noise).
- {clip_count} clips = {len(VOICES)} voices x {INTENTS_PER_VOICE} clips (MInDS-14 en-US has 563). Each voice says
  {INTENTS_PER_VOICE} of the {len(INTENTS)} intents, once each; each intent has {voices_per_intent} clips, from {voices_per_intent} different voices.
  Many voices with few clips each, like MInDS-14's callers, because a classifier's accuracy on unseen
  speakers depends more on how many distinct voices it trained on than on how many clips each gave
  (the package keeps its demo data under 15 MB).
- {phrasing_count} hand-written phrasings per intent; each is used {voices_per_intent // phrasing_count} or {-(-voices_per_intent // phrasing_count)} times across the intent's {voices_per_intent} clips.

Intents: {", ".join(INTENTS)}.

## Voices

Each voice is an espeak-ng English accent plus a voice variant, with a base rate (`-s`, words per minute)
and pitch (`-p`, 0-99). Every clip jitters the rate by up to +-{RATE_JITTER_FRACTION:.0%} and the pitch by up to +-{PITCH_JITTER}.

- {len(ACCENTS)} accents x {2 * VOICES_PER_ACCENT_AND_SEX} voices: each accent has {VOICES_PER_ACCENT_AND_SEX} female- and {VOICES_PER_ACCENT_AND_SEX} male-sounding voices.
- Variants: {len(FEMALE_VARIANTS)} female-sounding ({", ".join(FEMALE_VARIANTS)}) and
  {len(MALE_VARIANTS)} male-sounding ({", ".join(MALE_VARIANTS)}). Within an accent no variant repeats,
  and each variant is used with 5 or 6 accents, so no two voices share both accent and variant.
  Whisper- and croak-like variants, novelty variants and the MBROLA voices are not used.
- Base rates {BASE_RATE_WPM[0]}-{BASE_RATE_WPM[1]} wpm and base pitches {BASE_PITCH[0]}-{BASE_PITCH[1]}, each spread evenly over
  each sex's voices in random (seeded) order.
- Intents: the {VOICES_PER_ACCENT_AND_SEX} voices of one accent and sex say {VOICES_PER_ACCENT_AND_SEX // 2} complementary pairs of intent sets (7 random intents
  and the other 7; no set twice), so every intent is said by {VOICES_PER_ACCENT_AND_SEX // 2} voices of each accent and sex.
- v001-v008, v009-v016, ...: each block of 8 has every accent once, 4 female and 4 male voices, and an accent
  alternates sex from block to block. v001-v064 and v065-v128 each say every intent {voices_per_intent // 2} times.

| voice | espeak-ng `-v` | accent | sounds | base rate (wpm) | base pitch | intents |
|---|---|---|---|---|---|---|
{voice_rows}

## How it was made

```
python scripts/make_demo_data.py            # writes src/audioclf/demo_data/minds14_synth/
python scripts/make_demo_data.py --output DIR
```

The script (see its docstring) speaks each phrasing with espeak-ng, trims espeak's edge silence,
resamples 22050 Hz to 8000 Hz with soxr, adds {LEAD_SILENCE_SECONDS[0]}-{LEAD_SILENCE_SECONDS[1]} s of silence before
and {TRAIL_SILENCE_SECONDS[0]}-{TRAIL_SILENCE_SECONDS[1]} s after, sets the speech level to a random
{SPEECH_RMS_DBFS[0]:.0f} to {SPEECH_RMS_DBFS[1]:.0f} dBFS RMS, and adds white or pink noise at a random SNR of
{NOISE_SNR_DB[0]:.0f}-{NOISE_SNR_DB[1]:.0f} dB. All randomness is seeded (seed {SEED}) and espeak-ng is deterministic,
so rerunning the script with the same espeak-ng version reproduces this dataset.
This copy was made with: {espeak_version}.

## Licence

Generated by the audioclf authors and distributed under the same licence as audioclf (Apache-2.0).
espeak-ng is GPL-3.0-or-later, but the GPL covers the program, not the audio it produces:
the generated speech is ours. No MInDS-14 audio or text is included; the phrasings were written for this dataset.
"""


def build(output_dir: Path) -> int:
    """Write the whole dataset to `output_dir` (which must not exist yet); returns the clip count."""
    rows = []
    times_used = {intent: np.zeros(len(PHRASINGS[intent]), dtype=int) for intent in INTENTS}
    for voice_index, voice in enumerate(VOICES):
        voice_dir = output_dir / "clips" / voice.voice_id
        voice_dir.mkdir(parents=True)
        for intent in voice.intents:
            intent_index = INTENTS.index(intent)
            # One generator per (voice, intent): the dataset is reproducible, and each clip is
            # independent of the others' audio, so editing one voice leaves the other clips' sound unchanged.
            rng = np.random.default_rng([SEED, voice_index, intent_index])
            (phrasing_index,) = pick_least_used(rng, times_used[intent], 1)
            text = PHRASINGS[intent][phrasing_index]
            clip = render_clip(rng, voice, text)
            relative_path = f"clips/{voice.voice_id}/{intent}.flac"
            sf.write(output_dir / relative_path, clip, TARGET_SAMPLING_RATE_HZ, format="FLAC", subtype="PCM_16")
            rows.append({"path": relative_path, "label": intent, "voice": voice.voice_id, "text": text})
        print(f"{voice.voice_id} ({voice.espeak_voice}): {len(voice.intents)} clips", flush=True)

    rows.sort(key=lambda row: row["path"])
    with open(output_dir / "manifest.csv", "w", newline="", encoding="utf-8") as manifest:
        writer = csv.DictWriter(manifest, fieldnames=["path", "label", "voice", "text"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    # Record the espeak-ng version: another version may pronounce differently, so it is part of "reproducible".
    version_line = subprocess.run(["espeak-ng", "--version"], check=True, capture_output=True, text=True).stdout
    espeak_version = version_line.split("Data at")[0].strip()  # drop the machine-specific data path
    (output_dir / "README.md").write_text(readme_text(len(rows), espeak_version), encoding="utf-8")
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT_DIR, help="dataset folder (replaced if it exists)"
    )
    args = parser.parse_args(argv)
    output_dir = args.output.resolve()

    if shutil.which("espeak-ng") is None:
        print("espeak-ng is not installed (apt-get install espeak-ng)", file=sys.stderr)
        return 1
    check_design(VOICES)
    check_voices()

    # Build next to the destination (same filesystem, so the final rename is atomic),
    # and only replace the old dataset once the new one is complete.
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        build_dir = staging_dir / output_dir.name
        clip_count = build(build_dir)
        previous_dir = staging_dir / "previous"  # removed with the staging folder below
        if output_dir.exists():
            output_dir.rename(previous_dir)
        try:
            build_dir.rename(output_dir)
        except OSError:
            if previous_dir.exists():
                previous_dir.rename(output_dir)  # put the old dataset back rather than lose it
            raise
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)

    size_bytes = sum(path.stat().st_size for path in output_dir.rglob("*") if path.is_file())
    print(f"wrote {clip_count} clips, {size_bytes / 1e6:.1f} MB, to {output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
