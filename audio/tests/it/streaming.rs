//! The streaming API gives the same samples as `load_audio`, in the promised pieces, and
//! reports progress.

use tessera_audio::{AudioStream, N_SAMPLES, STREAM_CHUNK, load_audio, load_audio_with_progress};

use crate::common::{cached, fixture};

#[test]
fn chunks_concatenate_to_the_whole_file() {
    for name in ["speech_44k_stereo.flac", "speech.mp3", "speech_8k.wav"] {
        let whole = load_audio(fixture(name)).unwrap();
        let chunks: Vec<Vec<f32>> = AudioStream::open(fixture(name)).unwrap().map(Result::unwrap).collect();
        let (last, full) = chunks.split_last().unwrap();
        assert!(full.iter().all(|c| c.len() == STREAM_CHUNK), "{name}");
        assert!(!last.is_empty() && last.len() <= STREAM_CHUNK, "{name}");
        assert_eq!(chunks.concat(), whole, "{name}");
    }
}

#[test]
fn read_samples_gives_exact_windows() {
    // 30 s windows of the 11 s JFK clip: one short window, then nothing.
    let mut s = AudioStream::open(cached("data/jfk.wav")).unwrap();
    assert_eq!(s.duration_hint(), Some(11.0));
    assert_eq!(s.expected_samples(), Some(176_000));
    assert_eq!(s.read_samples(N_SAMPLES).unwrap().len(), 176_000);
    assert!(s.read_samples(N_SAMPLES).unwrap().is_empty());
    assert!(s.next().is_none());

    let whole = load_audio(fixture("speech_44k_stereo.flac")).unwrap();
    let mut s = AudioStream::open(fixture("speech_44k_stereo.flac")).unwrap();
    let mut pieces = Vec::new();
    for n in [1usize, 7, 1000, 0, 5000].into_iter().cycle() {
        let p = s.read_samples(n).unwrap();
        if p.len() < n {
            pieces.extend(p);
            break;
        }
        pieces.extend(p);
    }
    assert_eq!(pieces, whole);
}

#[test]
fn progress_reaches_the_end() {
    let mut seen = Vec::new();
    let samples = load_audio_with_progress(cached("data/jfk.mp3"), |p| seen.push(p)).unwrap();
    assert!(seen.len() >= 11, "{} progress reports", seen.len());
    assert!(
        seen.windows(2)
            .all(|w| w[0].bytes_read <= w[1].bytes_read && w[0].seconds <= w[1].seconds)
    );
    assert!(seen.windows(2).all(|w| w[0].fraction() <= w[1].fraction()));
    let last = seen.last().unwrap();
    assert_eq!(Some(last.bytes_read), last.total_bytes);
    let total = last.total_seconds.expect("jfk.mp3 declares its duration");
    assert!((last.seconds - total).abs() < 0.05, "{last:?}");
    assert!((last.fraction().unwrap() - 1.0).abs() < 0.01);
    assert!((samples.len() as f64 / 16_000.0 - total).abs() < 0.1);
}

#[test]
fn a_pipe_is_read_front_to_back() {
    // A FIFO has no length and cannot seek: the stream still decodes it.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("audio.fifo");
    let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::write(fifo, std::fs::read(fixture("speech.mp3")).unwrap()).unwrap())
    };
    let mut s = AudioStream::open(&fifo).unwrap();
    let mut samples = Vec::new();
    for chunk in s.by_ref() {
        samples.extend(chunk.unwrap());
    }
    writer.join().unwrap();
    assert_eq!(samples, load_audio(fixture("speech.mp3")).unwrap());
    assert_eq!(s.progress().total_bytes, None);
}

#[test]
fn a_pipe_longer_than_the_memory_limit_is_held_not_read_twice() {
    use tessera_audio::{MelSource, MelSpectrogram, Spectrogram};
    // A regular file past the limit streams (reading it again); a pipe cannot be read
    // again, so it is held whole and gives the same spectrogram.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("audio.fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::write(fifo, std::fs::read(fixture("speech.mp3")).unwrap()).unwrap())
    };
    let mel = MelSpectrogram::new(80).unwrap();
    let limit = 1000;
    let mut piped = Spectrogram::open(&mel, &fifo, limit, |_| {}).unwrap();
    writer.join().unwrap();
    assert!(matches!(piped, Spectrogram::InMemory(_)));
    let mut file = Spectrogram::open(&mel, &fixture("speech.mp3"), limit, |_| {}).unwrap();
    assert!(matches!(file, Spectrogram::Streamed(_)));
    assert_eq!(piped.content_frames(), file.content_frames());
    let n = file.content_frames();
    assert_eq!(piped.segment(0, n, 3000).unwrap(), file.segment(0, n, 3000).unwrap());
}
