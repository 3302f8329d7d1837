"""Deterministic captioned demo corpus: synthetic sounds with paraphrased captions.

Clip `i` of seed `s` is drawn from its own generator `default_rng([s, i])`, so a clip
never depends on how many clips are made. `clip_spec` draws the attributes and
captions (cheap: builders embed every caption before rendering any audio) and
`render` turns a spec into a 16 kHz float32 waveform.

Kinds of sound (`CLASS_NAMES`, one label per clip): tones at named pitches, chords,
harmonic instruments with envelopes, coloured noises, chirps, click rhythms,
tremolo and vibrato. About a fifth of the clips mix a quieter second source under
the labelled one; their captions name both.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

SAMPLE_RATE = 16_000
MIN_SECONDS, MAX_SECONDS = 2.0, 6.0
MIX_PROBABILITY = 0.2
MIX_GAIN_DB = -10.0  # The second source sits under the labelled one.

CLASS_NAMES: tuple[str, ...] = (
  "sine tone",
  "musical chord",
  "plucked string",
  "organ",
  "bell",
  "white noise",
  "pink noise",
  "brown noise",
  "rising chirp",
  "falling chirp",
  "rhythmic clicks",
  "tremolo tone",
  "vibrato tone",
)

# Loudness name -> (RMS in dBFS, adjectives used in captions).
LOUDNESS: dict[str, tuple[float, tuple[str, ...]]] = {
  "quiet": (-32.0, ("quiet", "soft", "faint")),
  "moderate": (-22.0, ("moderately loud", "medium-volume", "clear")),
  "loud": (-13.0, ("loud", "strong", "powerful")),
}
_NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_CHORDS = {"major": (0, 4, 7), "minor": (0, 3, 7), "dominant seventh": (0, 4, 7, 10)}
_BELL_RATIOS = (1.0, 2.0, 2.76, 5.4, 8.93)  # Inharmonic partials of a struck bell.


@dataclasses.dataclass(frozen=True)
class Source:
  """One sound source: its class, synthesis parameters and describing phrases."""

  kind: str
  params: dict[str, Any]
  phrases: tuple[str, ...]  # Paraphrased noun phrases, e.g. "a sine tone at A4".


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """Everything needed to render and caption one clip."""

  index: int
  seed: int
  label: int
  duration_s: float
  loudness: str
  sources: tuple[Source, ...]  # sources[0] is the labelled one.
  captions: tuple[str, ...]

  @property
  def clip_id(self) -> str:
    return f"synth_{self.seed}_{self.index:06d}"

  @property
  def num_samples(self) -> int:
    return int(round(self.duration_s * SAMPLE_RATE))


@dataclasses.dataclass(frozen=True)
class Clip:
  """A rendered clip: spec plus float32 waveform at 16 kHz."""

  spec: ClipSpec
  audio: np.ndarray


def midi_to_hz(midi: float) -> float:
  return 440.0 * 2.0 ** ((midi - 69) / 12.0)


def note_name(midi: int) -> str:
  return f"{_NOTE_NAMES[midi % 12]}{midi // 12 - 1}"


# ----------------------------------------------------------------------------
# Attribute drawing (cheap; no audio).


def _harmonics(f0: float, count: int, rolloff: float) -> list[tuple[float, float]]:
  """(frequency, amplitude) of the first `count` harmonics below 7.5 kHz."""
  return [(f0 * k, k**-rolloff) for k in range(1, count + 1) if f0 * k < 7500.0]


def _draw_source(kind: str, rng: np.random.Generator) -> Source:
  """Draws the parameters and description phrases of one source of `kind`."""
  midi = int(rng.integers(48, 85))  # C3 .. C6
  note, hz = note_name(midi), midi_to_hz(midi)
  tonal = dict(am_rate=0.0, am_depth=0.0, fm_rate=0.0, fm_depth=0.0)
  if kind == "sine tone":
    return Source(
      kind,
      dict(tonal, partials=[(hz, 1.0)], envelope="sustain"),
      (
        f"a sine tone at {note}",
        f"a pure tone playing the note {note}",
        f"a steady {hz:.0f} Hz sine wave",
      ),
    )
  if kind == "musical chord":
    quality = str(rng.choice(list(_CHORDS)))
    partials = [p for step in _CHORDS[quality] for p in _harmonics(midi_to_hz(midi + step), 3, 1.5)]
    root = _NOTE_NAMES[midi % 12]
    return Source(
      kind,
      dict(tonal, partials=partials, envelope="sustain"),
      (
        f"a {root} {quality} chord",
        f"a sustained {quality} chord rooted on {note}",
        f"several notes forming a {root} {quality} chord",
      ),
    )
  if kind == "plucked string":
    return Source(
      kind,
      dict(
        tonal,
        partials=_harmonics(hz, 8, 1.0),
        envelope="pluck",
        decay=float(rng.uniform(2.0, 6.0)),
        repeat=float(rng.uniform(0.5, 1.0)),
      ),
      (
        f"a plucked string playing {note}",
        f"repeated guitar-like plucks on the note {note}",
        f"a string instrument picked at {note}",
      ),
    )
  if kind == "organ":
    return Source(
      kind,
      dict(tonal, partials=_harmonics(hz, 6, 0.7), envelope="sustain"),
      (
        f"an organ holding the note {note}",
        f"a sustained organ tone at {note}",
        f"a reedy organ note at {note}",
      ),
    )
  if kind == "bell":
    partials = [(hz * r, 1.0 / (1 + i)) for i, r in enumerate(_BELL_RATIOS) if hz * r < 7500.0]
    return Source(
      kind,
      dict(
        tonal, partials=partials, envelope="pluck", decay=float(rng.uniform(0.8, 2.0)), repeat=0.0
      ),
      (
        f"a bell struck at {note}",
        f"a ringing bell with pitch {note}",
        f"a metallic bell chime around {hz:.0f} Hz",
      ),
    )
  if kind in ("white noise", "pink noise", "brown noise"):
    colour = kind.split()[0]
    alt = {
      "white": "hiss",
      "pink": "rushing noise like a waterfall",
      "brown": "deep rumbling noise",
    }
    return Source(
      kind,
      dict(exponent={"white": 0.0, "pink": 0.5, "brown": 1.0}[colour]),
      (f"{colour} noise", f"a steady {alt[colour]}", f"broadband {colour} noise"),
    )
  if kind in ("rising chirp", "falling chirp"):
    low, high = sorted(float(x) for x in rng.uniform(150.0, 4000.0, size=2))
    high = max(high, 2.0 * low)
    rising = kind == "rising chirp"
    f0, f1 = (low, high) if rising else (high, low)
    direction = "rising" if rising else "falling"
    verb = "sweeping up" if rising else "sweeping down"
    return Source(
      kind,
      dict(f0=f0, f1=f1),
      (
        f"a {direction} chirp",
        f"a tone {verb} from {f0:.0f} Hz to {f1:.0f} Hz",
        f"a {direction} frequency sweep",
      ),
    )
  if kind == "rhythmic clicks":
    bpm = int(rng.integers(60, 181))
    return Source(
      kind,
      dict(bpm=bpm, click_hz=float(rng.uniform(1500.0, 4000.0))),
      (
        f"rhythmic clicks at {bpm} beats per minute",
        "a metronome-like ticking",
        f"regular clicking, about {bpm / 60:.1f} clicks per second",
      ),
    )
  if kind == "tremolo tone":
    rate = float(rng.uniform(3.0, 9.0))
    return Source(
      kind,
      dict(
        tonal,
        partials=_harmonics(hz, 4, 1.2),
        envelope="sustain",
        am_rate=rate,
        am_depth=float(rng.uniform(0.5, 0.9)),
      ),
      (
        f"a tone at {note} with tremolo",
        f"a pulsing tone whose volume wavers {rate:.0f} times a second",
        f"a throbbing {note} note",
      ),
    )
  if kind == "vibrato tone":
    rate = float(rng.uniform(4.0, 8.0))
    return Source(
      kind,
      dict(
        tonal,
        partials=_harmonics(hz, 4, 1.2),
        envelope="sustain",
        fm_rate=rate,
        fm_depth=float(rng.uniform(0.01, 0.03)),
      ),
      (
        f"a tone at {note} with vibrato",
        f"a wavering {note} note whose pitch wobbles",
        f"a singing-like tone with vibrato around {hz:.0f} Hz",
      ),
    )
  raise ValueError(f"unknown synth kind {kind!r}; expected one of {CLASS_NAMES}")


def _captions(
  sources: tuple[Source, ...], loudness: str, duration_s: float, rng: np.random.Generator
) -> tuple[str, ...]:
  """Three paraphrased captions built from the clip's attributes."""
  adjectives = rng.permutation(LOUDNESS[loudness][1])
  first = sources[0].phrases
  order = rng.permutation(len(first))
  secs = f"{duration_s:.0f} seconds"
  bodies = [
    f"{first[order[0]]}, {adjectives[0]}",
    f"{adjectives[1]} sound: {first[order[1]]}",
    f"about {secs} of {first[order[2]]} ({adjectives[2]})",
  ]
  if len(sources) > 1:
    extra = sources[1].phrases
    bodies[0] += f", over {extra[0]}"
    bodies[1] += f", with {extra[1]} quietly in the background"
    bodies[2] += f" mixed with {extra[2]}"
  return tuple(b[0].upper() + b[1:] + "." for b in bodies)


def clip_spec(index: int, seed: int = 0) -> ClipSpec:
  """Draws clip `index`'s attributes and captions from its own generator."""
  if index < 0:
    raise ValueError(f"clip index must be >= 0, got {index}")
  rng = np.random.default_rng([seed, index])
  label = int(rng.integers(len(CLASS_NAMES)))
  sources = [_draw_source(CLASS_NAMES[label], rng)]
  if rng.random() < MIX_PROBABILITY:
    other = int(rng.choice([c for c in range(len(CLASS_NAMES)) if c != label]))
    sources.append(_draw_source(CLASS_NAMES[other], rng))
  loudness = str(rng.choice(list(LOUDNESS)))
  duration_s = round(float(rng.uniform(MIN_SECONDS, MAX_SECONDS)), 2)
  sources = tuple(sources)
  return ClipSpec(
    index=index,
    seed=seed,
    label=label,
    duration_s=duration_s,
    loudness=loudness,
    sources=sources,
    captions=_captions(sources, loudness, duration_s, rng),
  )


# ----------------------------------------------------------------------------
# Rendering.


def _fade(n: int, sr: int, seconds: float = 0.01) -> np.ndarray:
  """Short linear fade-in/out so clips start and end without a click."""
  env = np.ones(n, np.float32)
  k = min(int(seconds * sr), n // 2)
  ramp = np.linspace(0.0, 1.0, k, endpoint=False, dtype=np.float32)
  env[:k], env[n - k :] = ramp, ramp[::-1]
  return env


def _tonal(p: dict[str, Any], n: int, sr: int) -> np.ndarray:
  t = np.arange(n, dtype=np.float64) / sr
  # Vibrato: frequency f·(1 + d·sin(2πrt)) integrates to this phase offset per Hz.
  fm = 0.0
  if p["fm_rate"] > 0:
    fm = -p["fm_depth"] / p["fm_rate"] * np.cos(2 * np.pi * p["fm_rate"] * t)
  x = np.zeros(n, np.float64)
  for freq, amp in p["partials"]:
    x += amp * np.sin(2 * np.pi * freq * (t + fm))
  if p["envelope"] == "pluck":
    period = p["repeat"] if p["repeat"] > 0 else t[-1] + 1.0
    x *= np.exp(-p["decay"] * np.mod(t, period))
  if p["am_rate"] > 0:
    x *= 1.0 - p["am_depth"] * 0.5 * (1.0 + np.sin(2 * np.pi * p["am_rate"] * t))
  return x


def _noise(p: dict[str, Any], n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
  spectrum = np.fft.rfft(rng.standard_normal(n))
  freqs = np.fft.rfftfreq(n, 1.0 / sr)
  # Power ∝ 1/f^(2·exponent); the 20 Hz floor keeps brown noise from drifting.
  spectrum *= np.maximum(freqs, 20.0) ** -p["exponent"]
  return np.fft.irfft(spectrum, n)


def _chirp(p: dict[str, Any], n: int, sr: int) -> np.ndarray:
  t = np.arange(n, dtype=np.float64) / sr
  duration = n / sr
  k = p["f1"] / p["f0"]
  # Exponential sweep: instantaneous frequency f0·k^(t/T).
  phase = 2 * np.pi * p["f0"] * duration / np.log(k) * (k ** (t / duration) - 1.0)
  return np.sin(phase)


def _clicks(p: dict[str, Any], n: int, sr: int) -> np.ndarray:
  x = np.zeros(n, np.float64)
  length = int(0.008 * sr)
  tc = np.arange(length) / sr
  click = np.sin(2 * np.pi * p["click_hz"] * tc) * np.exp(-tc / 0.0015)
  step = 60.0 / p["bpm"] * sr
  for start in np.arange(0.05 * sr, n - length, step).astype(int):
    x[start : start + length] += click
  return x


def _render_source(source: Source, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
  if "partials" in source.params:
    return _tonal(source.params, n, sr)
  if "exponent" in source.params:
    return _noise(source.params, n, sr, rng)
  if "f0" in source.params:
    return _chirp(source.params, n, sr)
  return _clicks(source.params, n, sr)


def _rms(x: np.ndarray) -> float:
  return float(np.sqrt(np.mean(np.square(x)) + 1e-20))


def render(spec: ClipSpec, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """Renders a spec to a float32 waveform in [-1, 1] at the spec's loudness."""
  n = int(round(spec.duration_s * sample_rate))
  # Separate stream from `clip_spec`'s so that captions and audio stay independent.
  rng = np.random.default_rng([spec.seed, spec.index, 1])
  x = np.zeros(n, np.float64)
  for i, source in enumerate(spec.sources):
    y = _render_source(source, n, sample_rate, rng)
    gain_db = 0.0 if i == 0 else MIX_GAIN_DB
    x += y / _rms(y) * 10.0 ** (gain_db / 20.0)
  x *= 10.0 ** (LOUDNESS[spec.loudness][0] / 20.0) / _rms(x)
  peak = float(np.max(np.abs(x)))
  if peak > 0.99:  # Keep peaky sounds (clicks, bells) inside full scale.
    x *= 0.99 / peak
  return (x * _fade(n, sample_rate)).astype(np.float32)


def make_clip(index: int, seed: int = 0) -> Clip:
  """Draws and renders clip `index`."""
  spec = clip_spec(index, seed)
  return Clip(spec=spec, audio=render(spec))
