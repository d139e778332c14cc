//! Panics of dependencies turned into errors. Some parsers we rely on (`tokenizers`'
//! deserializers, image and audio codecs) panic on malformed input where they should
//! return an error; [`catch`] runs such a call and returns the panic's message instead, and
//! [`install_quiet_hook`] keeps the default hook from printing a caught panic as if the
//! program had crashed.

use std::any::Any;
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, UnwindSafe};
use std::sync::Once;

thread_local! {
    static CATCHING: Cell<u32> = const { Cell::new(0) };
}

/// Runs `f`; a panic inside it comes back as `Err` with its message.
pub fn catch<R>(f: impl FnOnce() -> R + UnwindSafe) -> Result<R, String> {
    CATCHING.with(|c| c.set(c.get() + 1));
    let result = std::panic::catch_unwind(f);
    CATCHING.with(|c| c.set(c.get() - 1));
    result.map_err(|payload| message(payload.as_ref()))
}

/// [`catch`] for closures that borrow mutable state the caller drops on failure.
pub fn catch_mut<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    catch(AssertUnwindSafe(f))
}

/// The text a panic was raised with.
pub fn message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "no message".to_owned())
}

/// Wraps the process's panic hook so that panics raised inside [`catch`] on this thread
/// print nothing: they are reported as the errors they become. Idempotent.
pub fn install_quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CATCHING.with(Cell::get) == 0 {
                previous(info);
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_panic_is_its_message() {
        assert_eq!(catch(|| 7), Ok(7));
        assert_eq!(catch(|| panic!("bad {}", 1)), Err::<(), _>("bad 1".to_owned()));
        assert_eq!(
            catch(|| std::panic::panic_any(5u8)),
            Err::<(), _>("no message".to_owned())
        );
        // Nesting and unwinding leave the counter balanced.
        assert_eq!(catch(|| catch(|| panic!("inner")).unwrap_err()), Ok("inner".to_owned()));
        assert_eq!(CATCHING.with(Cell::get), 0);
    }
}
