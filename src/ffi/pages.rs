//! `qg_pages`: the pages and items of a list.

use super::boundary::{OutPtr, Success, free_box, to_box, try_mut};
use super::error::{FfiError, qg_result};
use super::response::qg_response;
use super::string::to_c_string;
use crate::client::Items;
use std::ffi::c_char;

/// The pages (and items) of a list, following `@odata.nextLink`.
///
/// Methods: `qg_pages_next`, `qg_pages_next_item`, `qg_pages_free`.
///
/// Not for use by several threads at once. Free it with `qg_pages_free`.
pub struct qg_pages {
    pub(super) items: Items,
}

impl qg_pages {
    /// `next`'s answer, or the failure that ended the run (given again, never `QG_DONE`),
    /// or `None` after the last page.
    fn step<T>(
        &mut self,
        next: impl FnOnce(&mut Items) -> Option<Result<T, crate::client::Error>>,
    ) -> Result<Option<T>, FfiError> {
        if let Some(e) = self.items.failure() {
            return Err(e.clone().into());
        }
        Ok(next(&mut self.items).transpose()?)
    }
}

/// Fetches the next page: `QG_OK` and a response in `*out` (free with
/// `qg_response_free`), `QG_DONE` after the last page, or a failure as in
/// `qg_client_send`, where an error status is `QG_ERR_HTTP_STATUS`, and
/// `QG_ERR_PAGING` when a next link leads back to a page already fetched or the list has
/// more pages than `qg_client_builder_set_max_pages` allows. A failure ends the run:
/// every later call returns the same failure again (with its last error text), never
/// `QG_DONE`, so a loop that stops at the first result other than `QG_OK` can tell a
/// complete list (`QG_DONE`) from a partial one. Blocks like `qg_client_send`, and stops
/// at the request's `qg_request_cancel`. No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_pages_next(p: *mut qg_pages, out: *mut *mut qg_response) -> qg_result {
    ffi_boundary! {
        let p = unsafe { try_mut(p, "pages") }?;
        let out = OutPtr::new(out, "out")?;
        let Some((response, _)) = p.step(|items| items.pages_mut().next_page())? else {
            return Ok(Success::Done);
        };
        out.write(to_box(qg_response { response }));
        Ok(Success::Ok)
    }
}

/// Gives the items of the pages' `value` arrays one by one, as JSON text in `*item_json`
/// (free with `qg_string_free`), fetching pages as needed; `QG_DONE` after the last item.
/// Failures as in `qg_pages_next`, and the same failure again on every later call. One
/// call may fetch several pages when pages hold no items; it stops at the request's
/// `qg_request_cancel`, and with `QG_ERR_TIMEOUT` once the client's quota-wait budget
/// (`qg_client_builder_set_max_quota_wait_ms`) has passed between such pages. Do not mix
/// with `qg_pages_next` on the same pages. No NULL.
#[unsafe(no_mangle)]
pub extern "C" fn qg_pages_next_item(p: *mut qg_pages, item_json: *mut *mut c_char) -> qg_result {
    ffi_boundary! {
        let p = unsafe { try_mut(p, "pages") }?;
        let out = OutPtr::new(item_json, "item_json")?;
        let Some(item) = p.step(Iterator::next)? else {
            return Ok(Success::Done);
        };
        out.write(to_c_string(item.to_string())?);
        Ok(Success::Ok)
    }
}

/// Frees pages. NULL does nothing; never free the same pages twice.
#[unsafe(no_mangle)]
pub extern "C" fn qg_pages_free(p: *mut qg_pages) {
    super::boundary::run_void(|| unsafe { free_box(p) })
}
