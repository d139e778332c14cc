//! `tessera transcribe`: audio files through the front-end and Whisper, written as text,
//! subtitles or JSON.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tessera_audio::transcribe::output::{Format, render};
use tessera_audio::transcribe::{Observer, Segment, Task, TranscribeOptions, transcribe};
use tessera_audio::vad::{SpeechOnly, VadOptions, detect_speech_keeping, restore_timestamps};
use tessera_audio::{IN_MEMORY_SAMPLES, MelSpectrogram, Progress, SampleReader, Spectrogram};
use tessera_models::loader::{locate, parse_device, tessera_home};
use tessera_models::silero_vad::SileroVad;
use tessera_models::whisper::Whisper;

/// The default speech model: fetched by `scripts/fetch-models`.
pub const DEFAULT_SPEECH_MODEL: &str = "whisper-tiny.en";

#[derive(Args, Debug)]
pub struct TranscribeArgs {
    /// Audio files (WAV, FLAC, MP3, Ogg Vorbis, M4A/AAC, ...).
    #[arg(required = true)]
    audio: Vec<PathBuf>,
    /// A Whisper checkpoint directory (CTranslate2 or Hugging Face), a Hugging Face repo id,
    /// or a fetched model's short name (whisper-tiny.en, whisper-base).
    #[arg(long, short, default_value = DEFAULT_SPEECH_MODEL)]
    model: String,
    /// txt, srt, vtt, tsv or json.
    #[arg(long, short, default_value = "txt")]
    format: Format,
    /// Write `<audio stem>.<format>` here instead of printing to stdout.
    #[arg(long, short)]
    output_dir: Option<PathBuf>,
    /// Beams at temperature 0 (1: greedy).
    #[arg(long, default_value_t = 5)]
    beam_size: usize,
    /// Samples per window when falling back to a temperature above 0.
    #[arg(long, default_value_t = 5)]
    best_of: usize,
    /// Language code (en, de, fr, ...); detected when omitted (multilingual models).
    #[arg(long)]
    language: Option<String>,
    /// transcribe, or translate into English (multilingual models).
    #[arg(long, default_value = "transcribe", value_parser = parse_task)]
    task: Task,
    /// Text that precedes the audio (names, spelling, style).
    #[arg(long)]
    initial_prompt: Option<String>,
    /// Word-level timestamps from cross-attention (in json output).
    #[arg(long)]
    word_timestamps: bool,
    /// Start temperature; fallback adds `temperature_increment` up to 1.0.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// 0 disables the fallback.
    #[arg(long, default_value_t = 0.2)]
    temperature_increment: f32,
    /// Do not condition each window on the text before it.
    #[arg(long)]
    no_condition_on_previous_text: bool,
    /// Retry a window hotter when its text's gzip compression ratio is above this (too
    /// repetitive); a negative value disables the test.
    #[arg(long, default_value_t = 2.4, allow_negative_numbers = true)]
    compression_ratio_threshold: f32,
    /// Retry a window hotter when its mean token log-probability is below this; -inf or
    /// below -100 disables the test.
    #[arg(long, default_value_t = -1.0, allow_negative_numbers = true)]
    logprob_threshold: f32,
    /// A window whose no-speech probability is above this and whose mean log-probability
    /// fails `--logprob-threshold` is silence: skipped. A negative value disables it.
    #[arg(long, default_value_t = 0.6, allow_negative_numbers = true)]
    no_speech_threshold: f32,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Transcribe only the speech: Silero VAD finds it (as faster-whisper's `vad_filter`),
    /// silence and music between are left out, and times stay the file's.
    #[arg(long)]
    vad: bool,
    /// The VAD model (`silero_vad_v6.onnx`); default: the one `scripts/fetch-models` fetches.
    #[arg(long, requires = "vad")]
    vad_model: Option<PathBuf>,
    /// Windows at or above this speech probability are speech.
    #[arg(long, default_value_t = 0.5, requires = "vad")]
    vad_threshold: f64,
    /// Silence shorter than this does not end a stretch of speech.
    #[arg(long, default_value_t = 2000, requires = "vad")]
    vad_min_silence_ms: u32,
    /// Stretches of speech are widened by this much on each side.
    #[arg(long, default_value_t = 400, requires = "vad")]
    vad_speech_pad_ms: u32,
    /// Stretches of speech this short are dropped.
    #[arg(long, default_value_t = 0, requires = "vad")]
    vad_min_speech_ms: u32,
    /// Longer stretches of speech are split (at a pause when there is one).
    #[arg(long, requires = "vad")]
    vad_max_speech_s: Option<f32>,
}

impl TranscribeArgs {
    fn vad_options(&self) -> Result<VadOptions> {
        if !(self.vad_threshold > 0.0 && self.vad_threshold < 1.0) {
            bail!("--vad-threshold {}: must be between 0 and 1", self.vad_threshold);
        }
        if let Some(s) = self.vad_max_speech_s
            && (s.is_nan() || s <= 0.0)
        {
            bail!("--vad-max-speech-s {s}: must be positive");
        }
        Ok(VadOptions {
            threshold: self.vad_threshold,
            neg_threshold: None,
            min_speech_duration_ms: self.vad_min_speech_ms,
            max_speech_duration_s: self.vad_max_speech_s.unwrap_or(f32::INFINITY),
            min_silence_duration_ms: self.vad_min_silence_ms,
            speech_pad_ms: self.vad_speech_pad_ms,
        })
    }

    /// The VAD model, when `--vad` asks for one.
    fn load_vad(&self) -> Result<Option<(SileroVad, VadOptions)>> {
        if !self.vad {
            return Ok(None);
        }
        let options = self.vad_options()?;
        let path = match &self.vad_model {
            Some(p) => p.clone(),
            None => {
                let p = tessera_home().join("models/silero-vad/silero_vad_v6.onnx");
                if !p.exists() {
                    bail!(
                        "{}: the VAD model is missing: run scripts/fetch-models, or pass --vad-model",
                        p.display()
                    );
                }
                p
            }
        };
        Ok(Some((SileroVad::load(&path)?, options)))
    }
}

fn parse_task(s: &str) -> Result<Task, String> {
    match s {
        "transcribe" => Ok(Task::Transcribe),
        "translate" => Ok(Task::Translate),
        _ => Err(format!("unknown task {s:?} (transcribe, translate)")),
    }
}

/// A progress bar on a terminal, nothing otherwise.
struct Bar(Option<ProgressBar>);

impl Observer for Bar {
    fn progress(&mut self, done: f32, total: f32) {
        if let Some(bar) = &self.0 {
            bar.set_length((total * 10.0) as u64);
            bar.set_position((done * 10.0) as u64);
        }
    }

    fn segments(&mut self, segments: &[Segment]) {
        if let Some(bar) = &self.0
            && let Some(last) = segments.iter().rev().find(|s| !s.text.is_empty())
        {
            bar.set_message(last.text.trim().chars().take(60).collect::<String>());
        }
    }
}

fn temperatures(start: f32, increment: f32) -> Result<Vec<f32>> {
    if !(0.0..=1.0).contains(&start) {
        bail!("--temperature {start}: must be between 0 and 1");
    }
    if increment < 0.0 {
        bail!("--temperature-increment {increment}: must not be negative");
    }
    let mut out = vec![start];
    if increment > 0.0 {
        let mut t = start + increment;
        while t <= 1.0 + 1e-6 {
            out.push((t * 1000.0).round() / 1000.0);
            t += increment;
        }
    }
    Ok(out)
}

pub fn run(args: TranscribeArgs) -> Result<()> {
    let device = parse_device(&args.device)?;
    let t0 = Instant::now();
    let location = locate(&args.model)?;
    let model = Whisper::load(location.path(), &device)?;
    tracing::info!(model = %args.model, ms = t0.elapsed().as_millis() as u64, "speech model loaded");
    let mel = MelSpectrogram::new(model.config().n_mels)?;
    let options = TranscribeOptions {
        task: args.task,
        language: args.language.clone(),
        beam_size: args.beam_size.max(1),
        best_of: args.best_of.max(1),
        temperatures: temperatures(args.temperature, args.temperature_increment)?,
        condition_on_previous_text: !args.no_condition_on_previous_text,
        initial_prompt: args.initial_prompt.clone(),
        word_timestamps: args.word_timestamps,
        compression_ratio_threshold: (args.compression_ratio_threshold >= 0.0)
            .then_some(args.compression_ratio_threshold),
        logprob_threshold: (args.logprob_threshold > -100.0).then_some(args.logprob_threshold),
        no_speech_threshold: (args.no_speech_threshold >= 0.0).then_some(args.no_speech_threshold),
        ..TranscribeOptions::default()
    };
    if let Some(dir) = &args.output_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the output directory", dir.display()))?;
    }
    let vad = args.load_vad()?;
    let tty = std::io::stderr().is_terminal();
    let mut failures = 0;
    for path in &args.audio {
        match transcribe_file(&model, &mel, vad.as_ref(), path, &options, &args, tty) {
            Ok(()) => {}
            Err(e) if args.audio.len() > 1 => {
                eprintln!("tessera: error: {e:#}");
                failures += 1;
            }
            Err(e) => return Err(e),
        }
    }
    if failures > 0 {
        bail!("{failures} of {} files failed", args.audio.len());
    }
    Ok(())
}

fn transcribe_file(
    model: &Whisper,
    mel: &MelSpectrogram,
    vad: Option<&(SileroVad, VadOptions)>,
    path: &Path,
    options: &TranscribeOptions,
    args: &TranscribeArgs,
    tty: bool,
) -> Result<()> {
    let t0 = Instant::now();
    let bar = tty.then(|| {
        let bar = ProgressBar::new(0).with_style(
            ProgressStyle::with_template("{prefix} {bar:30} {percent:>3}% {elapsed}<{eta} {msg}")
                .expect("a valid template"),
        );
        bar.set_prefix(
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        bar
    });
    // Until transcription starts, the bar shows the reading (the VAD's pass, a first pass
    // over a long file): an empty bar would draw as 100%.
    let reading = |what: &'static str| {
        let bar = bar.clone();
        move |p: Progress| {
            if let (Some(bar), Some(f)) = (&bar, p.fraction()) {
                bar.set_length(1000);
                bar.set_position((f * 1000.0) as u64);
                bar.set_message(what);
            }
        }
    };
    let (speech, speech_samples) = match vad {
        Some((vad, vad_options)) => {
            // The speech of a short file, or of any pipe (which cannot be read again), is
            // kept from this pass.
            let keep = match std::fs::metadata(path) {
                Ok(m) if !m.is_file() => usize::MAX,
                _ => IN_MEMORY_SAMPLES,
            };
            let (speech, samples) = detect_speech_keeping(vad, path, vad_options, keep, reading("detecting speech"))?;
            tracing::info!(
                file = %path.display(),
                chunks = speech.chunks.len(),
                speech_s = speech.speech_samples() as f32 / 16_000.0,
                audio_s = speech.total_samples as f32 / 16_000.0,
                "voice activity"
            );
            (Some(speech), samples)
        }
        None => (None, None),
    };
    let mut spectrogram = match (&speech, speech_samples) {
        // A short file's speech was kept by the VAD's pass: no second read.
        (Some(_), Some(samples)) => Spectrogram::InMemory(mel.compute_padded(&samples)),
        (Some(speech), None) => {
            let open = || -> tessera_audio::Result<Box<dyn SampleReader>> {
                Ok(Box::new(SpeechOnly::open(path, &speech.chunks)?))
            };
            Spectrogram::open_samples(mel, path, &open, IN_MEMORY_SAMPLES, reading("reading"))?
        }
        (None, _) => Spectrogram::open(mel, path, IN_MEMORY_SAMPLES, reading("reading"))?,
    };
    let mut observer = Bar(bar);
    let mut transcript = transcribe(model, &mut spectrogram, options, &mut observer)
        .with_context(|| format!("{}: transcription failed", path.display()))?;
    if let Some(speech) = &speech {
        restore_timestamps(&mut transcript, speech);
    }
    if let Some(bar) = &observer.0 {
        bar.finish_and_clear();
    }
    tracing::info!(
        file = %path.display(),
        audio_s = transcript.duration,
        wall_s = t0.elapsed().as_secs_f32(),
        segments = transcript.segments.len(),
        peak_rss_mib = peak_rss_mib().unwrap_or(0),
        "transcribed"
    );
    let text = render(&transcript, args.format);
    match &args.output_dir {
        Some(dir) => {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "audio".into());
            let out = dir.join(format!("{stem}.{}", args.format.extension()));
            let tmp = dir.join(format!(".{stem}.{}.tmp", args.format.extension()));
            std::fs::write(&tmp, text).with_context(|| format!("{}: cannot write", tmp.display()))?;
            std::fs::rename(&tmp, &out).with_context(|| format!("{}: cannot write", out.display()))?;
            eprintln!("{}", out.display());
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(text.as_bytes())?;
            stdout.flush()?;
        }
    }
    Ok(())
}

/// This process's peak resident memory so far (Linux's `VmHWM`), for the log. A parent
/// cannot measure it reliably: `wait4` reports at least the parent's own size at the time
/// of the spawn, which the child's mapping briefly shared.
fn peak_rss_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_schedule() {
        assert_eq!(temperatures(0.0, 0.2).unwrap(), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(temperatures(0.0, 0.0).unwrap(), vec![0.0]);
        assert_eq!(temperatures(0.5, 0.5).unwrap(), vec![0.5, 1.0]);
        assert!(temperatures(1.5, 0.2).is_err());
    }
}
