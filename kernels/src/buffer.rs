//! `WeightBuffer`: the memory a repacked weight lives in.
//!
//! On Linux, weights are carved out of large anonymous mappings (chunks) that start at a
//! 2 MiB boundary and ask for transparent huge pages. A decode step streams every weight
//! once: with 4 KiB pages it walks a TLB entry per 4 KiB of a 485 MB model, and decode ran
//! at 67-70 tokens/s on this project's 2-core machine; with every weight in huge pages,
//! 72-92. One weight alone is rarely a multiple of 2 MiB (a 0.5B model's are 0.1-5 MB),
//! so weights share chunks, packed one after another: only a chunk's last huge page is
//! partly used. The kernel hands chunks out zeroed (no `memset` pass) and faults them in
//! 2 MiB at a time. A chunk is unmapped when its last weight is dropped. Elsewhere, and
//! for small weights, a buffer is a vector.

use std::ops::{Deref, DerefMut};

/// The size of a transparent huge page on x86-64, and the alignment that gets one.
const HUGE_PAGE: usize = 2 << 20;

/// Weights from this size on are carved from chunks.
#[cfg(target_os = "linux")]
const CHUNKED_FROM: usize = 64 << 10;

/// Element types whose all-zero bytes are a valid value (zero) and that need no more than
/// 64-byte alignment.
pub(crate) trait Plain: Copy + Default + Send + Sync + 'static {}
impl Plain for u8 {}
impl Plain for f32 {}
impl Plain for half::f16 {}

pub(crate) enum WeightBuffer<T: Plain = u8> {
    Heap(Vec<T>),
    #[cfg(target_os = "linux")]
    Chunked(huge::Slice<T>),
}

impl<T: Plain> WeightBuffer<T> {
    /// `len` zeros.
    pub(crate) fn zeroed(len: usize) -> WeightBuffer<T> {
        #[cfg(target_os = "linux")]
        if len.saturating_mul(size_of::<T>()) >= CHUNKED_FROM
            && let Some(slice) = huge::Slice::zeroed(len)
        {
            return WeightBuffer::Chunked(slice);
        }
        WeightBuffer::Heap(vec![T::default(); len])
    }
}

impl<T: Plain> Deref for WeightBuffer<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            WeightBuffer::Heap(v) => v,
            #[cfg(target_os = "linux")]
            WeightBuffer::Chunked(m) => m.as_slice(),
        }
    }
}

impl<T: Plain> DerefMut for WeightBuffer<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            WeightBuffer::Heap(v) => v,
            #[cfg(target_os = "linux")]
            WeightBuffer::Chunked(m) => m.as_mut_slice(),
        }
    }
}

impl<T: Plain> std::fmt::Debug for WeightBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WeightBuffer({} x {})", self.len(), std::any::type_name::<T>())
    }
}

impl<T: Plain> Clone for WeightBuffer<T> {
    fn clone(&self) -> WeightBuffer<T> {
        let mut copy = WeightBuffer::zeroed(self.len());
        copy.copy_from_slice(self);
        copy
    }
}

#[cfg(target_os = "linux")]
mod huge {
    use std::ptr::NonNull;
    use std::sync::{Arc, Mutex, Weak};

    use super::{HUGE_PAGE, Plain};

    /// A new chunk's size, unless one weight needs more.
    const CHUNK: usize = 64 << 20;
    /// Each weight starts on a cache line (the kernels read 64-byte vectors).
    const ALIGN: usize = 64;

    /// The chunk weights are being carved from, and how much of it is taken. Weak: a chunk
    /// whose weights are all dropped is unmapped, and the next weight starts a new one.
    static CURRENT: Mutex<Option<(Weak<Mapping>, usize)>> = Mutex::new(None);

    /// `len` values of type `T` in a chunk, from byte `offset`; no other `Slice` overlaps
    /// them.
    pub(crate) struct Slice<T> {
        chunk: Arc<Mapping>,
        offset: usize,
        len: usize,
        values: std::marker::PhantomData<T>,
    }

    impl<T: Plain> Slice<T> {
        pub(crate) fn zeroed(len: usize) -> Option<Slice<T>> {
            let bytes = len.checked_mul(size_of::<T>())?;
            let mut current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((chunk, used)) = current.as_mut()
                && let Some(chunk) = chunk.upgrade()
            {
                let offset = used.next_multiple_of(ALIGN);
                if offset.checked_add(bytes).is_some_and(|end| end <= chunk.len) {
                    *used = offset + bytes;
                    return Some(Slice::new(chunk, offset, len));
                }
            }
            if let Some((old, used)) = current.as_ref()
                && let Some(old) = old.upgrade()
            {
                // The huge page that the last weight ends in is backed whole; give back
                // what no weight will use of it.
                old.release(*used, old.len);
            }
            let chunk = Arc::new(Mapping::zeroed(bytes.max(CHUNK))?);
            *current = Some((Arc::downgrade(&chunk), bytes));
            Some(Slice::new(chunk, 0, len))
        }

        fn new(chunk: Arc<Mapping>, offset: usize, len: usize) -> Slice<T> {
            Slice {
                chunk,
                offset,
                len,
                values: std::marker::PhantomData,
            }
        }

        pub(crate) fn as_slice(&self) -> &[T] {
            // SAFETY: the range lies inside the chunk, which lives while `self` holds it, and
            // no `Slice` that could write to it overlaps this one.
            // The offset is a multiple of 64 and the zeroed bytes are `T` zeros (`Plain`).
            unsafe { std::slice::from_raw_parts(self.chunk.start.as_ptr().add(self.offset).cast(), self.len) }
        }

        pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
            // SAFETY: as in `as_slice`; `&mut self` makes this the only reference to the range.
            unsafe { std::slice::from_raw_parts_mut(self.chunk.start.as_ptr().add(self.offset).cast(), self.len) }
        }
    }

    impl<T> Drop for Slice<T> {
        /// Gives the whole pages of the range back to the kernel: weights replaced while a
        /// model loads (q, k and v, once stacked into one matrix) would otherwise stay
        /// resident until their chunk's last weight goes.
        fn drop(&mut self) {
            self.chunk.release(self.offset, self.offset + self.len * size_of::<T>());
        }
    }

    /// `len` bytes of private anonymous memory starting at a huge-page boundary.
    struct Mapping {
        start: NonNull<u8>,
        len: usize,
    }

    // SAFETY: the mapping is owned memory, like a `Vec<u8>`'s.
    unsafe impl Send for Mapping {}
    // SAFETY: the mapping itself is never written through `&Mapping`; `Slice`s write
    // only to their own disjoint ranges.
    unsafe impl Sync for Mapping {}

    fn page_size() -> usize {
        // SAFETY: sysconf has no preconditions.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(size)
            .ok()
            .filter(|s| s.is_power_of_two())
            .unwrap_or(4096)
    }

    impl Mapping {
        fn zeroed(len: usize) -> Option<Mapping> {
            let page = page_size();
            // One spare huge page of address space lets the buffer start aligned; what is
            // not used of it is unmapped again before anything touches it.
            let span = len.checked_add(HUGE_PAGE)?.checked_next_multiple_of(page)?;
            // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    span,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if base == libc::MAP_FAILED {
                return None;
            }
            let base = base as usize;
            let start = base.next_multiple_of(HUGE_PAGE);
            let end = (start + len).next_multiple_of(page);
            // SAFETY: both ranges lie inside the mapping just made and outside the buffer.
            unsafe {
                if start > base {
                    libc::munmap(base as *mut libc::c_void, start - base);
                }
                if base + span > end {
                    libc::munmap(end as *mut libc::c_void, base + span - end);
                }
                // Only advice: without transparent huge pages the mapping works the same.
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
            Some(Mapping {
                start: NonNull::new(start as *mut u8)?,
                len,
            })
        }
    }

    impl Mapping {
        /// Returns the whole pages within `from..to` to the kernel. The caller owns that
        /// range (no slice uses it); it stays mapped and would read as zeros.
        fn release(&self, from: usize, to: usize) {
            let page = page_size();
            let base = self.start.as_ptr() as usize;
            let first = (base + from).next_multiple_of(page);
            let end = (base + to.min(self.len)) / page * page;
            if end > first {
                // SAFETY: whole pages inside this mapping that no slice uses.
                unsafe {
                    libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_DONTNEED);
                }
            }
        }
    }

    impl Drop for Mapping {
        fn drop(&mut self) {
            let len = self.len.next_multiple_of(page_size());
            // SAFETY: exactly the range `zeroed` left mapped; nothing refers to it any more.
            unsafe {
                libc::munmap(self.start.as_ptr().cast(), len);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_zeroed_writable_and_clone_exactly() {
        for len in [0, 1, 4095, HUGE_PAGE - 1, HUGE_PAGE, 3 * HUGE_PAGE + 12345] {
            let mut buffer = WeightBuffer::<u8>::zeroed(len);
            assert_eq!(buffer.len(), len);
            assert!(buffer.iter().all(|&b| b == 0), "len {len}");
            for (i, b) in buffer.iter_mut().enumerate() {
                *b = (i * 31 % 251) as u8;
            }
            let copy = buffer.clone();
            assert_eq!(&copy[..], &buffer[..], "len {len}");
            #[cfg(target_os = "linux")]
            if len >= CHUNKED_FROM {
                assert!(matches!(buffer, WeightBuffer::Chunked(_)));
                assert_eq!(buffer.as_ptr() as usize % 64, 0, "len {len}");
            }
        }
        let mut floats = WeightBuffer::<f32>::zeroed(CHUNKED_FROM / 4 + 3);
        assert!(floats.iter().all(|&v| v == 0.0));
        floats[7] = 1.5;
        assert_eq!(floats.clone()[7], 1.5);
        #[cfg(target_os = "linux")]
        assert!(matches!(floats, WeightBuffer::Chunked(_)));
    }
}
