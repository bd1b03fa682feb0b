//! The memory bound on tar headers: a reader under the `tar` crate that refuses to feed it more than
//! [`MAX_ENTRY_HEADERS`] bytes of headers for one entry.
//!
//! The crate reads an entry's PAX extended header and GNU long name/link whole into memory (`read_all`) before it
//! returns the entry, whatever size the header claims; there is no hook to check that size first. Every byte
//! the crate reads between two entries, once the previous entry's data has been drained, is header: padding,
//! header blocks, those extension entries and sparse maps. So the budget is armed only around `next()` and a read
//! beyond it fails, before more than [`MAX_ENTRY_HEADERS`] bytes are in memory.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

use super::MAX_ENTRY_HEADERS;

/// The budget: the headers proper, the header blocks and padding around them.
const BUDGET: u64 = MAX_ENTRY_HEADERS + 8 * 512;

/// The reader under the `tar` crate, counting what the crate reads while it looks for the next entry.
pub(super) struct HeaderBudget<R> {
    inner: R,
    state: Rc<BudgetState>,
}

impl<R> HeaderBudget<R> {
    pub(super) fn new(inner: R, state: Rc<BudgetState>) -> HeaderBudget<R> {
        HeaderBudget { inner, state }
    }
}

/// Shared between the reader and the loop that asks the crate for entries.
#[derive(Default)]
pub(super) struct BudgetState {
    armed: Cell<bool>,
    used: Cell<u64>,
    exceeded: Cell<bool>,
}

impl BudgetState {
    /// Allows the crate up to [`MAX_ENTRY_HEADERS`] (and a few blocks of padding and headers) from now on.
    pub(super) fn arm(&self) {
        self.used.set(0);
        self.armed.set(true);
    }

    pub(super) fn disarm(&self) {
        self.armed.set(false);
    }

    /// Whether a read failed because the headers went over the budget.
    pub(super) fn exceeded(&self) -> bool {
        self.exceeded.get()
    }
}

impl<R: Read> Read for HeaderBudget<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let st = &self.state;
        if !st.armed.get() {
            return self.inner.read(buf);
        }
        let left = BUDGET - st.used.get();
        if left == 0 {
            st.exceeded.set(true);
            return Err(io::Error::new(io::ErrorKind::InvalidData, "tar headers too large"));
        }
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let got = self.inner.read(&mut buf[..n])?;
        st.used.set(st.used.get() + got as u64);
        Ok(got)
    }
}

/// Calls `each` on every entry of the tar stream `src`, with the headers before each entry bounded by the budget.
/// Each entry is drained (what `each` did not read skipped) before the next is asked for, so that everything the
/// crate reads in `next()` is header. PAX and GNU extension headers the crate did not attach to an entry (a global
/// PAX header, or one in a header format the crate does not recognise) carry nothing to unpack: skipped, their
/// data never read.
pub(super) fn for_each_entry<R: Read, E: From<super::UnpackError>>(
    src: R,
    mut each: impl FnMut(&mut tar::Entry<'_, HeaderBudget<R>>) -> Result<(), E>,
) -> Result<(), E> {
    use super::UnpackError;
    let budget = Rc::new(BudgetState::default());
    let mut archive = tar::Archive::new(HeaderBudget::new(src, budget.clone()));
    let mut entries = archive.entries().map_err(UnpackError::Read)?;
    loop {
        budget.arm();
        let next = entries.next();
        budget.disarm();
        let mut entry = match next {
            None => return Ok(()),
            Some(Ok(e)) => e,
            Some(Err(_)) if budget.exceeded() => {
                return Err(UnpackError::HeadersTooLarge {
                    limit: MAX_ENTRY_HEADERS,
                }
                .into())
            }
            Some(Err(e)) => return Err(UnpackError::Read(e).into()),
        };
        let extension = matches!(
            entry.header().entry_type(),
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        );
        if !extension {
            each(&mut entry)?;
        }
        io::copy(&mut entry, &mut io::sink()).map_err(UnpackError::Read)?;
    }
}
