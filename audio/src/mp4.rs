//! The edit list of an MP4/M4A audio track, which symphonia's MP4 reader does not apply
//! (0.6: "edits are not currently supported"). Encoders store the AAC priming there (1024
//! or 2112 samples of encoder delay, `media_time`) and the real length
//! (`segment_duration`); ffmpeg, and so openai-whisper, trims both. Without it every
//! timestamp of an M4A transcript would be 64 ms late.
//!
//! Only the first audio track's single edit is read (an optional leading empty edit
//! aside); anything more elaborate is ignored and the track decodes untrimmed.

use std::io::{Read, Seek, SeekFrom};

/// What the edit list asks for, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Edit {
    /// Media time to drop at the start.
    pub skip: f64,
    /// Duration to keep after that, if the edit gives one.
    pub keep: Option<f64>,
}

/// Boxes visited at most: a malformed file cannot make the walk long.
const MAX_BOXES: usize = 4096;
/// Largest leaf box read into memory (`mvhd`, `mdhd`, `hdlr`, `elst`).
const MAX_LEAF: u64 = 1 << 20;

/// The audio edit of the MP4 file `r`, if it has a usable one. Any read error or malformed
/// box means "no edit": the file is then decoded as symphonia reads it.
pub(crate) fn audio_edit<R: Read + Seek>(r: &mut R) -> Option<Edit> {
    let len = r.seek(SeekFrom::End(0)).ok()?;
    let mut walk = Walk {
        r,
        boxes: 0,
        movie_timescale: None,
        tracks: Vec::new(),
    };
    walk.children(0, len, 0).ok()?;
    let movie_timescale = walk.movie_timescale.filter(|&t| t > 0)?;
    let track = walk.tracks.iter().find(|t| t.handler == *b"soun")?;
    let media_timescale = track.timescale.filter(|&t| t > 0)?;
    let edits: Vec<&(u64, i64)> = track.edits.iter().filter(|(_, media_time)| *media_time >= 0).collect();
    let [&(duration, media_time)] = edits[..] else {
        return None;
    };
    Some(Edit {
        skip: media_time as f64 / media_timescale as f64,
        keep: (duration > 0).then(|| duration as f64 / movie_timescale as f64),
    })
}

#[derive(Default)]
struct Track {
    handler: [u8; 4],
    timescale: Option<u32>,
    /// `(segment_duration, media_time)` per entry.
    edits: Vec<(u64, i64)>,
}

struct Walk<'a, R> {
    r: &'a mut R,
    boxes: usize,
    movie_timescale: Option<u32>,
    tracks: Vec<Track>,
}

type Malformed = ();

impl<R: Read + Seek> Walk<'_, R> {
    /// The boxes between `start` and `end`.
    fn children(&mut self, start: u64, end: u64, depth: usize) -> Result<(), Malformed> {
        let mut pos = start;
        while pos + 8 <= end {
            self.boxes += 1;
            if self.boxes > MAX_BOXES || depth > 8 {
                return Err(());
            }
            self.r.seek(SeekFrom::Start(pos)).map_err(drop)?;
            let mut head = [0u8; 8];
            self.r.read_exact(&mut head).map_err(drop)?;
            let mut size = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as u64;
            let kind = [head[4], head[5], head[6], head[7]];
            let mut header = 8;
            if size == 1 {
                let mut large = [0u8; 8];
                self.r.read_exact(&mut large).map_err(drop)?;
                size = u64::from_be_bytes(large);
                header = 16;
            } else if size == 0 {
                size = end - pos;
            }
            if size < header || pos.checked_add(size).is_none_or(|e| e > end) {
                return Err(());
            }
            let body = (pos + header, pos + size);
            match &kind {
                b"moov" | b"mdia" | b"edts" => self.children(body.0, body.1, depth + 1)?,
                b"trak" => {
                    self.tracks.push(Track::default());
                    self.children(body.0, body.1, depth + 1)?;
                }
                b"mvhd" => self.movie_timescale = Some(timescale(&self.leaf(body)?)?),
                b"mdhd" => {
                    let t = timescale(&self.leaf(body)?)?;
                    self.current()?.timescale = Some(t);
                }
                b"hdlr" => {
                    let b = self.leaf(body)?;
                    self.current()?.handler = b.get(8..12).ok_or(())?.try_into().map_err(drop)?;
                }
                b"elst" => {
                    let edits = edit_list(&self.leaf(body)?)?;
                    self.current()?.edits = edits;
                }
                _ => {}
            }
            pos += size;
        }
        Ok(())
    }

    fn current(&mut self) -> Result<&mut Track, Malformed> {
        self.tracks.last_mut().ok_or(())
    }

    fn leaf(&mut self, (start, end): (u64, u64)) -> Result<Vec<u8>, Malformed> {
        if end - start > MAX_LEAF {
            return Err(());
        }
        let mut b = vec![0u8; (end - start) as usize];
        self.r.seek(SeekFrom::Start(start)).map_err(drop)?;
        self.r.read_exact(&mut b).map_err(drop)?;
        Ok(b)
    }
}

fn be32(b: &[u8], at: usize) -> Result<u32, Malformed> {
    Ok(u32::from_be_bytes(
        b.get(at..at + 4).ok_or(())?.try_into().map_err(drop)?,
    ))
}

fn be64(b: &[u8], at: usize) -> Result<u64, Malformed> {
    Ok(u64::from_be_bytes(
        b.get(at..at + 8).ok_or(())?.try_into().map_err(drop)?,
    ))
}

/// The timescale of an `mvhd` or `mdhd` body (after version and flags: creation and
/// modification times, 32 or 64 bits each, then the timescale).
fn timescale(b: &[u8]) -> Result<u32, Malformed> {
    match b.first() {
        Some(0) => be32(b, 12),
        Some(1) => be32(b, 20),
        _ => Err(()),
    }
}

/// `(segment_duration, media_time)` of each entry of an `elst` body.
fn edit_list(b: &[u8]) -> Result<Vec<(u64, i64)>, Malformed> {
    let version = *b.first().ok_or(())?;
    let count = be32(b, 4)? as usize;
    let entry = match version {
        0 => 12,
        1 => 20,
        _ => return Err(()),
    };
    if b.len() < 8 + count.checked_mul(entry).ok_or(())? {
        return Err(());
    }
    (0..count)
        .map(|i| {
            let at = 8 + i * entry;
            Ok(match version {
                0 => (be32(b, at)? as u64, be32(b, at + 4)? as i32 as i64),
                _ => (be64(b, at)?, be64(b, at + 8)? as i64),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A box of `kind` around `body`.
    fn bx(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut b = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(body);
        b
    }

    fn mp4(handler: &[u8; 4], edits: &[(u32, i32)]) -> Vec<u8> {
        let mut header = vec![0u8; 12];
        header.extend_from_slice(&1000u32.to_be_bytes());
        let mvhd = bx(b"mvhd", &header);
        let mut mdhd = vec![0u8; 12];
        mdhd.extend_from_slice(&16_000u32.to_be_bytes());
        let mut hdlr = vec![0u8; 8];
        hdlr.extend_from_slice(handler);
        let mut elst = vec![0u8; 4];
        elst.extend_from_slice(&(edits.len() as u32).to_be_bytes());
        for (d, t) in edits {
            elst.extend_from_slice(&d.to_be_bytes());
            elst.extend_from_slice(&t.to_be_bytes());
            elst.extend_from_slice(&[0, 1, 0, 0]);
        }
        let mdia = bx(b"mdia", &[bx(b"mdhd", &mdhd), bx(b"hdlr", &hdlr)].concat());
        let trak = bx(b"trak", &[bx(b"edts", &bx(b"elst", &elst)), mdia].concat());
        [bx(b"ftyp", b"M4A "), bx(b"moov", &[mvhd, trak].concat())].concat()
    }

    #[test]
    fn reads_the_priming_and_the_length() {
        let edit = audio_edit(&mut Cursor::new(mp4(b"soun", &[(1659, 1024)]))).unwrap();
        assert_eq!(
            edit,
            Edit {
                skip: 0.064,
                keep: Some(1.659)
            }
        );
        // A leading empty edit is allowed.
        let edit = audio_edit(&mut Cursor::new(mp4(b"soun", &[(10, -1), (1659, 2112)]))).unwrap();
        assert_eq!(edit.skip, 0.132);
    }

    #[test]
    fn ignores_what_it_does_not_understand() {
        assert_eq!(audio_edit(&mut Cursor::new(mp4(b"vide", &[(1659, 1024)]))), None);
        assert_eq!(audio_edit(&mut Cursor::new(mp4(b"soun", &[(1, 0), (1, 5)]))), None);
        assert_eq!(audio_edit(&mut Cursor::new(mp4(b"soun", &[]))), None);
        let mut bad = mp4(b"soun", &[(1659, 1024)]);
        bad.truncate(bad.len() - 3);
        assert_eq!(audio_edit(&mut Cursor::new(bad)), None);
        assert_eq!(audio_edit(&mut Cursor::new(b"not an mp4 at all".to_vec())), None);
    }
}
