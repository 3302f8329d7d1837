"""Stage 1 of M2D-CLAP (2025): M2D + 0.01·CLAP on ViT-B/16, 80×608 crops, batch 2048.

The paper trains 300 epochs with NV-Embed-v2 (4096-d) caption embeddings on AudioSet and
VGGSound (both with Auto-ACD captions; the 2025 clap/ scripts list
rawcap_auto_acd_vggsound.csv), WavCaps, AudioCaps and Clotho. The official run
concatenates the file lists and draws uniformly, so `data.train` gives no weights: each
corpus is drawn in proportion to its size (the trainer logs the shares and passes at start).

AudioCaps is not a source of its own: its clips are AudioSet clips and the official caption
lookup is keyed by YouTube id, so its captions join the AudioSet record of the same clip
(one copy of the audio, Auto-ACD + AudioCaps captions); so do the captions of WavCaps'
AudioSet_SL part (jaxclap's choice under the same rule). Build the corpora as distributed
(layouts: `python -m jaxclap.data.build --help`) with
`python -m jaxclap.data.build --text_model=nvidia/NV-Embed-v2 --backend=st`:

  --dataset=audioset --manual_dir=<AudioSet segment CSVs + audio>
      --captions=<Auto-ACD train.csv>   (clips without one: "The sound of <labels>.")
      --merge_captions=<AudioCaps train.csv>,<WavCaps AudioSet_SL/as_final.json>
      (AudioCaps val/test clips are AudioSet clips too: merging their captions would leak
      them into training)
  --dataset=vggsound --manual_dir=<VGGSound> --captions=<Auto-ACD train.csv>
  --dataset=wavcaps/freesound (and wavcaps/bbc_sound_effects, wavcaps/soundbible)
      --manual_dir=<WavCaps>
  --dataset=clotho    --manual_dir=<Clotho v2>
  --dataset=audiocaps --manual_dir=<AudioCaps> (validation only)

Short clips are zero-padded to 6.1 s as waveform (data.min_seconds), as wav_to_lms.py does.
"""

from jaxclap.train import config as config_lib


def get_config():
  """Paper recipe; see jaxclap/train/config.py for every knob."""
  c = config_lib.base_config()
  c.data.train = config_lib.PAPER_TRAIN  # By size (no weights), as the official run.
  c.data.val = "audiocaps:validation"
  c.data.build_demo = False
  c.data.num_workers = 8  # Per host; decoding and cropping keep up with a v5e host at 8.
  c.data.min_seconds = 6.1  # wav_to_lms.py min_length.
  c.model.size = "base"
  c.model.text_dim = 4096  # NV-Embed-v2.
  c.model.dtype = "bfloat16"  # Mixed precision as in the paper; params stay float32.
  c.train.global_batch = 2048
  c.train.epochs = 300.0
  c.optim.warmup_epochs = 20.0
  return c
