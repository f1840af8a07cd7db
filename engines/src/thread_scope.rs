//! A value installed for the current thread for the length of one call: the job's log sink
//! ([`crate::job_log::with_sink`]) and its cancel token ([`crate::cancel::with_token`]).

use std::cell::RefCell;
use std::thread::LocalKey;

/// The thread-local slot such a value lives in.
pub(crate) type Slot<T> = LocalKey<RefCell<Option<T>>>;

/// Runs `f` with `value` in `slot` for this thread; the previous value (if any) is put back
/// afterwards, also when `f` panics.
pub(crate) fn with_installed<T: 'static, R>(
    slot: &'static Slot<T>,
    value: T,
    f: impl FnOnce() -> R,
) -> R {
    struct Restore<T: 'static> {
        slot: &'static Slot<T>,
        previous: Option<T>,
    }
    impl<T: 'static> Drop for Restore<T> {
        fn drop(&mut self) {
            let previous = self.previous.take();
            self.slot.with(|s| *s.borrow_mut() = previous);
        }
    }
    let previous = slot.with(|s| s.borrow_mut().replace(value));
    let _restore = Restore { slot, previous };
    f()
}
