//! Reading an audio file as 16 kHz mono f32 samples, streaming: symphonia demuxes and
//! decodes one packet at a time, each packet is downmixed to mono (the mean of its channels)
//! and fed to the resampler, and only the 16 kHz output is kept, so a long file is never in
//! memory at its own rate and channel count. [`AudioStream`] hands that output out in pieces;
//! [`load_audio`] collects it.
//!
//! What counts as an error: a file that is empty, unreadable, not audio, without an audio
//! track, in a codec or sample format the decoders lack, whose container breaks beyond
//! resynchronising, or in which nothing decodes. What does not: a file cut short (its audio
//! up to the cut is returned, with a `tracing` warning), a damaged packet or page amid good
//! ones (skipped with a warning, as ffmpeg does; when the next packet's timestamp shows time
//! was lost, that time is filled with silence so later audio keeps its timestamps), and a
//! file with no samples (an empty result).
//!
//! MP4/M4A edit lists (encoder delay) are applied here (the private `mp4` module); MP3 and
//! Vorbis encoder delay and padding are trimmed by symphonia's gapless decoding.

use std::fs::File;
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use symphonia::core::codecs::audio::{AudioDecoder, AudioDecoderOptions};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, FormatReader, TrackType};
use symphonia::core::io::{MediaSource, MediaSourceStream, MediaSourceStreamOptions};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::units::{Duration as Ticks, TimeBase};

use crate::SAMPLE_RATE;
use crate::error::{Error, Result};
use crate::mp4;
use crate::resample::Resampler;

/// Samples per item of [`AudioStream`]'s iterator: one second at 16 kHz.
pub const STREAM_CHUNK: usize = SAMPLE_RATE as usize;

/// Packets in a row that may fail to decode before the file is declared corrupt.
const MAX_CONSECUTIVE_BAD_PACKETS: u32 = 64;

/// Decodes a whole file to 16 kHz mono f32 samples in [-1, 1].
///
/// Memory: the result, plus one packet and one resampler chunk at a time.
pub fn load_audio(path: impl AsRef<Path>) -> Result<Vec<f32>> {
    load_audio_with_progress(path, |_| {})
}

/// [`load_audio`], calling `progress` after each decoded second of output (and once at the
/// end) so a caller can draw a progress bar.
pub fn load_audio_with_progress(path: impl AsRef<Path>, mut progress: impl FnMut(Progress)) -> Result<Vec<f32>> {
    let mut stream = AudioStream::open(path)?;
    // Reserve the declared length once, unless the header claims more than the file could
    // hold (16 output samples per byte is beyond an 8 kbit/s MP3).
    let plausible = stream.progress().total_bytes.map_or(0, |b| b.saturating_mul(16)) as usize;
    let mut samples = Vec::with_capacity(stream.expected_samples().unwrap_or(0).min(plausible));
    loop {
        let chunk = stream.read_samples(STREAM_CHUNK)?;
        if chunk.is_empty() {
            break;
        }
        samples.extend_from_slice(&chunk);
        progress(stream.progress());
    }
    progress(stream.progress());
    Ok(samples)
}

/// How far a decode has got, for progress bars. Bytes are exact for any format; seconds
/// are of the source's own timeline and have a total only when the container declares one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Bytes of the file read so far (the reader buffers up to 64 KiB ahead).
    pub bytes_read: u64,
    /// The file's size; `None` for a pipe.
    pub total_bytes: Option<u64>,
    /// Seconds of audio decoded so far.
    pub seconds: f64,
    /// The duration the container declares, if it does.
    pub total_seconds: Option<f64>,
}

impl Progress {
    /// Done, from 0 to 1: by duration when known, by bytes otherwise; `None` when neither
    /// total is known (a pipe without a declared duration: show a spinner).
    pub fn fraction(&self) -> Option<f64> {
        let f = match (self.total_seconds, self.total_bytes) {
            (Some(total), _) if total > 0.0 => self.seconds / total,
            (_, Some(total)) if total > 0 => self.bytes_read as f64 / total as f64,
            _ => return None,
        };
        Some(f.clamp(0.0, 1.0))
    }
}

/// What the file declares about its audio track.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceInfo {
    /// Container format, as symphonia names it (`wave`, `flac`, `mp3`, `ogg`, `isomp4`, ...).
    pub container: String,
    /// Codec, as symphonia names it (`pcm_s16le`, `flac`, `mp3`, `vorbis`, `aac`, ...).
    pub codec: String,
    /// Sample rate in Hz, when the container declares it (the decoded audio decides).
    pub sample_rate: Option<u32>,
    /// Channel count, when declared.
    pub channels: Option<usize>,
    /// Duration in seconds, when declared.
    pub duration: Option<f64>,
}

/// A file being decoded to 16 kHz mono: an iterator of chunks of [`STREAM_CHUNK`] samples
/// (the last one shorter), or pieces of any size through [`AudioStream::read_samples`].
///
/// Only the output not yet handed out is buffered (at most a chunk plus one packet), so a
/// 3-hour file can be processed 30 s at a time in bounded memory. After an error the
/// iterator ends.
pub struct AudioStream {
    path: PathBuf,
    format: Box<dyn FormatReader>,
    decoder: Box<dyn AudioDecoder>,
    track_id: u32,
    info: SourceInfo,
    resampler: Option<Resampler>,
    /// Decoded, interleaved samples of the current packet.
    interleaved: Vec<f32>,
    /// 16 kHz output not yet handed out.
    ready: Vec<f32>,
    /// No more packets: the resampler has been flushed into `ready`.
    ended: bool,
    /// An error was returned: the iterator stops.
    failed: bool,
    bytes_read: Arc<AtomicU64>,
    total_bytes: Option<u64>,
    /// Source-rate frames decoded so far, and their duration.
    seconds: f64,
    good_packets: u64,
    bad_in_a_row: u32,
    last_bad: Option<String>,
    /// An MP4 edit list still to apply (see [`mp4`]), and once the rate is known, the
    /// source frames still to drop at the start and to keep after them.
    edit: Option<mp4::Edit>,
    skip_frames: u64,
    keep_frames: Option<u64>,
    /// The track's clock, and where the next packet should start on it: a later start
    /// means packets were lost (skipped as undecodable, or dropped by the demuxer), and
    /// their time is filled with silence so later audio keeps its timestamps.
    time_base: Option<TimeBase>,
    next_pts: Option<i64>,
}

impl std::fmt::Debug for AudioStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AudioStream")
            .field("path", &self.path)
            .field("info", &self.info)
            .field("progress", &self.progress())
            .finish_non_exhaustive()
    }
}

/// A forward-only source of 16 kHz mono samples: a decoded file ([`AudioStream`]), or part
/// of one (`vad::SpeechOnly`).
pub trait SampleReader {
    /// The next samples, at most `n`; empty once the source has ended.
    fn read_samples(&mut self, n: usize) -> Result<Vec<f32>>;
    /// How far through its file the source is.
    fn progress(&self) -> Progress;
    /// Whether opening the source again reads the same samples: a regular file, not a pipe.
    fn rereadable(&self) -> bool;
}

impl SampleReader for AudioStream {
    fn read_samples(&mut self, n: usize) -> Result<Vec<f32>> {
        AudioStream::read_samples(self, n)
    }

    fn progress(&self) -> Progress {
        AudioStream::progress(self)
    }

    fn rereadable(&self) -> bool {
        // Only a regular file has a known size.
        self.total_bytes.is_some()
    }
}

impl AudioStream {
    /// Opens `path`, recognises its container and codec, and prepares to decode its default
    /// audio track. Nothing is decoded yet.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            return Err(Error::io(path, std::io::Error::from(ErrorKind::IsADirectory)));
        }
        // A regular file can be seeked and measured; a pipe (`/dev/stdin`, a FIFO) is read
        // front to back, its length unknown.
        let regular = meta.is_file();
        if regular && meta.len() == 0 {
            return Err(Error::Empty {
                path: path.to_path_buf(),
            });
        }
        let total_bytes = regular.then_some(meta.len());
        let bytes_read = Arc::new(AtomicU64::new(0));
        let mut hint = Hint::new();
        if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
            hint.with_extension(ext);
        }
        let probe = |file: File, seekable: bool| {
            let source = CountingFile {
                file,
                len: meta.len(),
                pos: 0,
                seekable,
                shared: Arc::clone(&bytes_read),
            };
            let mss = MediaSourceStream::new(Box::new(source), MediaSourceStreamOptions::default());
            symphonia::default::get_probe().probe(&hint, mss, FormatOptions::default(), MetadataOptions::default())
        };
        let format = match probe(file, regular) {
            Ok(format) => format,
            // Readers that look for the last page or frame to learn the duration (Ogg) fail
            // on a file cut short; read such a file front to back instead, as a stream.
            Err(SymError::IoError(e)) if regular && e.kind() == ErrorKind::UnexpectedEof => {
                let file = File::open(path).map_err(|e| Error::io(path, e))?;
                let format = probe(file, false).map_err(|_| probe_error(path, SymError::IoError(e)))?;
                tracing::warn!("{}: the file seems cut short; decoding what is there", path.display());
                format
            }
            Err(e) => return Err(probe_error(path, e)),
        };
        let track = format
            .default_track(TrackType::Audio)
            .ok_or_else(|| Error::unsupported(path, "no audio track"))?;
        let params = track
            .codec_params
            .as_ref()
            .and_then(|p| p.audio())
            .ok_or_else(|| Error::unsupported(path, "the audio track has no codec parameters"))?;
        if params.sample_rate == Some(0) {
            return Err(Error::unsupported(path, "the file declares a sample rate of 0 Hz"));
        }
        let decoder = symphonia::default::get_codecs()
            .make_audio_decoder(params, &AudioDecoderOptions::default())
            .map_err(|e| Error::unsupported(path, format!("codec {}: {}", params.codec, e)))?;
        let sample_rate = params.sample_rate;
        let duration = match (track.num_frames, sample_rate) {
            (Some(n), Some(rate)) => Some(n as f64 / rate as f64),
            _ => track
                .time_base
                .zip(track.duration)
                .and_then(|(tb, d)| tb.calc_duration(d))
                .map(|t| t.as_secs_f64()),
        };
        let mut info = SourceInfo {
            container: format.format_info().short_name.to_string(),
            codec: decoder.codec_info().short_name.to_string(),
            sample_rate,
            channels: params.channels.as_ref().map(|c| c.count()),
            duration,
        };
        let track_id = track.id;
        let time_base = track.time_base;
        let edit = if regular && info.container == "isomp4" {
            File::open(path)
                .ok()
                .and_then(|f| mp4::audio_edit(&mut std::io::BufReader::new(f)))
        } else {
            None
        };
        if let Some(keep) = edit.and_then(|e| e.keep) {
            info.duration = Some(keep);
        }
        Ok(AudioStream {
            path: path.to_path_buf(),
            format,
            decoder,
            track_id,
            info,
            resampler: None,
            interleaved: Vec::new(),
            ready: Vec::new(),
            ended: false,
            failed: false,
            bytes_read,
            total_bytes,
            seconds: 0.0,
            good_packets: 0,
            bad_in_a_row: 0,
            last_bad: None,
            edit,
            skip_frames: 0,
            keep_frames: None,
            time_base,
            next_pts: None,
        })
    }

    /// The file being decoded.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the container declares about the track.
    pub fn info(&self) -> &SourceInfo {
        &self.info
    }

    /// The declared duration in seconds, if the container has one (WAV, FLAC, MP4 and most
    /// MP3s with a Xing/LAME header do; a stream may not).
    pub fn duration_hint(&self) -> Option<f64> {
        self.info.duration
    }

    /// The number of 16 kHz samples the declared duration comes to, if declared.
    pub fn expected_samples(&self) -> Option<usize> {
        self.info.duration.map(|d| (d * SAMPLE_RATE as f64).ceil() as usize)
    }

    /// Progress so far.
    pub fn progress(&self) -> Progress {
        Progress {
            bytes_read: self
                .bytes_read
                .load(Ordering::Relaxed)
                .min(self.total_bytes.unwrap_or(u64::MAX)),
            total_bytes: self.total_bytes,
            seconds: self.seconds,
            total_seconds: self.info.duration,
        }
    }

    /// The next up to `n` samples at 16 kHz: exactly `n` unless the audio ends first, empty
    /// once it has ended.
    pub fn read_samples(&mut self, n: usize) -> Result<Vec<f32>> {
        while self.ready.len() < n && !self.ended {
            if let Err(e) = self.decode_next() {
                self.failed = true;
                return Err(e);
            }
        }
        let take = n.min(self.ready.len());
        Ok(self.ready.drain(..take).collect())
    }

    /// Decodes one more packet into `ready`, or flushes the resampler at the end.
    fn decode_next(&mut self) -> Result<()> {
        let packet = match self.format.next_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => return self.finish(),
            Err(SymError::IoError(e)) if e.kind() == ErrorKind::UnexpectedEof => {
                // The file is cut short: keep what was there, as ffmpeg does.
                tracing::warn!(
                    "{}: the file ends early, after {:.2} s of audio; using what is there",
                    self.path.display(),
                    self.seconds
                );
                return self.finish();
            }
            Err(SymError::ResetRequired) => {
                // A chained Ogg stream starts a new track: Whisper input has one voice track,
                // so the first one is the audio.
                tracing::warn!(
                    "{}: the stream changes its tracks after {:.2} s; decoding stops there",
                    self.path.display(),
                    self.seconds
                );
                return self.finish();
            }
            Err(SymError::IoError(e)) => return Err(Error::io(&self.path, e)),
            // A damaged page or frame (an Ogg CRC mismatch, ...): readers resynchronise on
            // the next call, so skip it like an undecodable packet; the time it covered
            // becomes a gap that the next packet's timestamp reveals.
            Err(e @ SymError::DecodeError(_)) => return self.bad_packet(&e),
            Err(e) => {
                return Err(Error::corrupt(
                    &self.path,
                    format!("after {:.2} s of audio: {}", self.seconds, e),
                ));
            }
        };
        if packet.track_id != self.track_id {
            return Ok(());
        }
        let decoded = match self.decoder.decode(&packet) {
            Ok(buf) => buf,
            Err(e @ (SymError::DecodeError(_) | SymError::IoError(_))) => return self.bad_packet(&e),
            Err(e) => return Err(Error::unsupported(&self.path, e.to_string())),
        };
        let rate = decoded.spec().rate();
        let channels = decoded.spec().channels().count();
        let frames = decoded.frames();
        decoded.copy_to_vec_interleaved(&mut self.interleaved);
        self.good_packets += 1;
        self.bad_in_a_row = 0;
        if frames == 0 {
            return Ok(());
        }
        if rate == 0 || channels == 0 {
            return Err(Error::unsupported(
                &self.path,
                format!("decoded audio with {rate} Hz and {channels} channels"),
            ));
        }
        let gap = self.gap_before(packet.pts.get(), rate);
        self.next_pts = packet.pts.get().checked_add_unsigned(packet.dur.get());
        self.seconds += (gap + frames) as f64 / rate as f64;
        let mut mono = vec![0.0; gap];
        mono.extend(downmix(&self.interleaved, channels));
        if let Some(edit) = self.edit.take() {
            self.skip_frames = (edit.skip * rate as f64).round() as u64;
            self.keep_frames = edit.keep.map(|k| (k * rate as f64).round() as u64);
        }
        let skip = self.skip_frames.min(mono.len() as u64) as usize;
        self.skip_frames -= skip as u64;
        mono.drain(..skip);
        if let Some(keep) = &mut self.keep_frames {
            mono.truncate((*keep).min(mono.len() as u64) as usize);
            *keep -= mono.len() as u64;
        }
        if self.resampler.as_ref().map(Resampler::rate) != Some(rate) {
            // First packet, or the rate changed mid-stream (possible in MP3): finish the old
            // rate's output before starting over at the new one.
            if let Some(old) = &mut self.resampler {
                old.finish(&mut self.ready);
            }
            self.resampler = Some(Resampler::new(rate).map_err(|msg| Error::unsupported(&self.path, msg))?);
        }
        if let Some(r) = &mut self.resampler {
            r.push(&mono, &mut self.ready);
        }
        if self.keep_frames == Some(0) {
            // The edit list's length is reached: what follows is encoder padding.
            return self.finish();
        }
        Ok(())
    }

    /// Frames of silence standing in for lost packets before a packet starting at `pts`.
    fn gap_before(&self, pts: i64, rate: u32) -> usize {
        let (Some(expected), Some(tb)) = (self.next_pts, self.time_base) else {
            return 0;
        };
        let Some(ticks) = pts.checked_sub(expected).filter(|&t| t > 0) else {
            return 0;
        };
        let seconds = tb
            .calc_duration(Ticks::new(ticks as u64))
            .map_or(0.0, |t| t.as_secs_f64());
        let frames = (seconds * rate as f64).round() as usize;
        // A jump of more than a minute is a broken timestamp, not lost audio.
        if frames > 60 * rate as usize {
            return 0;
        }
        if frames > 0 {
            tracing::warn!(
                "{}: {:.3} s of audio lost at {:.2} s; filled with silence",
                self.path.display(),
                frames as f64 / rate as f64,
                self.seconds
            );
        }
        frames
    }

    /// A packet the decoder refused: skip it, unless nothing decodes at all.
    fn bad_packet(&mut self, e: &SymError) -> Result<()> {
        let msg = e.to_string();
        self.bad_in_a_row += 1;
        if self.bad_in_a_row >= MAX_CONSECUTIVE_BAD_PACKETS {
            return Err(Error::corrupt(
                &self.path,
                format!(
                    "{} packets in a row failed to decode after {:.2} s of audio: {msg}",
                    self.bad_in_a_row, self.seconds
                ),
            ));
        }
        tracing::warn!(
            "{}: skipping a packet that does not decode at {:.2} s: {msg}",
            self.path.display(),
            self.seconds
        );
        self.last_bad = Some(msg);
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        self.ended = true;
        if self.good_packets == 0
            && let Some(msg) = self.last_bad.take()
        {
            return Err(Error::corrupt(&self.path, format!("no packet decodes: {msg}")));
        }
        if let Some(r) = &mut self.resampler {
            r.finish(&mut self.ready);
        }
        Ok(())
    }
}

impl Iterator for AudioStream {
    type Item = Result<Vec<f32>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.read_samples(STREAM_CHUNK) {
            Ok(chunk) if chunk.is_empty() => None,
            Ok(chunk) => Some(Ok(chunk)),
            Err(e) => Some(Err(e)),
        }
    }
}

/// The mean of the channels of interleaved audio. Float files can hold NaN or infinity,
/// which would poison the whole spectrogram's maximum: they become silence.
fn downmix(interleaved: &[f32], channels: usize) -> Vec<f32> {
    let finite = |x: f32| if x.is_finite() { x } else { 0.0 };
    if channels == 1 {
        return interleaved.iter().map(|&x| finite(x)).collect();
    }
    let scale = 1.0 / channels as f32;
    interleaved
        .chunks_exact(channels)
        .map(|frame| frame.iter().map(|&x| finite(x)).sum::<f32>() * scale)
        .collect()
}

fn probe_error(path: &Path, e: SymError) -> Error {
    match e {
        SymError::Unsupported(msg) if msg.contains("no suitable format reader") => Error::UnknownFormat {
            path: path.to_path_buf(),
            msg: "no container format matches its first bytes".into(),
        },
        // Encoders write an MP4's index (`moov`) last unless asked to move it to the front.
        SymError::Unsupported(msg) if msg.contains("missing moov atom") => Error::corrupt(
            path,
            "the MP4 index (moov box) is missing: the file is cut short or was never finished",
        ),
        SymError::Unsupported(msg) | SymError::LimitError(msg) => Error::unsupported(path, msg),
        SymError::IoError(e) if e.kind() == ErrorKind::UnexpectedEof => {
            Error::corrupt(path, "the file ends before any audio could be read")
        }
        SymError::IoError(e) => Error::io(path, e),
        e => Error::corrupt(path, e.to_string()),
    }
}

/// A file that records how far it has been read, for [`Progress`].
struct CountingFile {
    file: File,
    len: u64,
    pos: u64,
    /// What the source tells symphonia; false reads the file strictly front to back.
    seekable: bool,
    shared: Arc<AtomicU64>,
}

impl Read for CountingFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read(buf)?;
        self.pos += n as u64;
        self.shared.store(self.pos, Ordering::Relaxed);
        Ok(n)
    }
}

impl Seek for CountingFile {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.pos = self.file.seek(to)?;
        self.shared.store(self.pos, Ordering::Relaxed);
        Ok(self.pos)
    }
}

impl MediaSource for CountingFile {
    fn is_seekable(&self) -> bool {
        self.seekable
    }

    fn byte_len(&self) -> Option<u64> {
        self.seekable.then_some(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downmix_averages_channels() {
        assert_eq!(downmix(&[1.0, 0.0, 0.5, 0.5, -1.0, 1.0], 2), vec![0.5, 0.5, 0.0]);
        assert_eq!(downmix(&[0.25, -0.5], 1), vec![0.25, -0.5]);
        assert_eq!(downmix(&[0.3, 0.3, 0.3], 3), vec![0.3f32 * 3.0 * (1.0 / 3.0)]);
    }

    #[test]
    fn progress_fraction_prefers_duration() {
        let p = Progress {
            bytes_read: 10,
            total_bytes: Some(100),
            seconds: 3.0,
            total_seconds: Some(12.0),
        };
        assert_eq!(p.fraction(), Some(0.25));
        let p = Progress {
            total_seconds: None,
            ..p
        };
        assert_eq!(p.fraction(), Some(0.1));
        let p = Progress { total_bytes: None, ..p };
        assert_eq!(p.fraction(), None);
    }
}
