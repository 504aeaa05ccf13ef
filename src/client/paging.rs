//! Paging: follow `@odata.nextLink` exactly as given, every page through the limiter, and
//! stop with an error when the links loop, when there are more pages than the client's
//! limit, or when pages without items outlast the call's budget.

use super::{Client, Error, Request, Response, bounds};
use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::time::Instant;

/// The most pages one paging run follows by default ([`ClientBuilder::max_pages`]): ten
/// times what the API's largest lists need at their smallest page size.
///
/// [`ClientBuilder::max_pages`]: super::ClientBuilder::max_pages
pub const DEFAULT_MAX_PAGES: u64 = 100_000;

/// Pages of a list, as answers. An error status ends the iteration with [`Error::Http`];
/// a link to a page already fetched, or a page beyond the limit, with [`Error::Paging`].
/// After an error the iteration is over, and [`Pages::failure`] tells why.
pub struct Pages {
    client: Client,
    next: Option<Request>,
    /// Hashes of the URLs fetched: a link back to any of them would loop for ever.
    seen: HashSet<u64>,
    hasher: RandomState,
    fetched: u64,
    max_pages: u64,
    failure: Option<Error>,
}

impl std::fmt::Debug for Pages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pages")
            .field("next", &self.next)
            .field("fetched", &self.fetched)
            .field("failure", &self.failure)
            .finish()
    }
}

/// The `@odata.nextLink` of a page, if any.
pub(crate) fn next_link(page: &serde_json::Value) -> Option<&str> {
    page.get("@odata.nextLink")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
}

impl Pages {
    pub(crate) fn new(client: Client, first: Request) -> Self {
        let max_pages = client.core.max_pages;
        Self {
            client,
            next: Some(first),
            seen: HashSet::new(),
            hasher: RandomState::new(),
            fetched: 0,
            max_pages,
            failure: None,
        }
    }

    /// The error that ended the iteration, if one did: the next page is never fetched
    /// after it.
    pub fn failure(&self) -> Option<&Error> {
        self.failure.as_ref()
    }

    /// The next page and its parsed JSON, or `None` after the last (or after an error).
    pub fn next_page(&mut self) -> Option<Result<(Response, serde_json::Value), Error>> {
        let mut req = self.next.take()?;
        // One deadline bounds every page: fixed when the first page is sent.
        if let Some(d) = req.deadline {
            let b = d.fix(std::time::Instant::now());
            req.deadline = Some(super::deadline::Deadline::At { at: b.at, of: b.of });
        }
        let result = self.fetch(&req);
        match &result {
            Ok((_, v)) => {
                if let Some(link) = next_link(v) {
                    // The same method, headers and cancel handle; the link replaces path
                    // and query.
                    let mut n = req.clone();
                    n.target = link.to_string();
                    n.query.clear();
                    self.next = Some(n);
                }
            }
            Err(e) => self.failure = Some(e.clone()),
        }
        Some(result)
    }

    fn fetch(&mut self, req: &Request) -> Result<(Response, serde_json::Value), Error> {
        if self.fetched >= self.max_pages {
            return Err(Error::Paging(format!(
                "the list has more than {} pages, the client's page limit (max_pages)",
                self.max_pages
            )));
        }
        let (url, _) = self.client.core.resolve(req)?;
        if !self.seen.insert(self.hasher.hash_one(&url)) {
            return Err(Error::Paging(format!(
                "the server's @odata.nextLink leads back to a page already fetched (after {} pages): following it would never end",
                self.fetched
            )));
        }
        self.fetched += 1;
        let r = self.client.send(req)?.error_for_status()?;
        let v: serde_json::Value = r
            .json()
            .map_err(|e| Error::InvalidArgument(format!("a page is not JSON: {e}")))?;
        Ok((r, v))
    }
}

impl Iterator for Pages {
    type Item = Result<Response, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_page().map(|r| r.map(|(resp, _)| resp))
    }
}

/// The items of `value` across all pages of a list. One call to `next` may fetch several
/// pages (pages can be empty); it stops at the request's cancel and, between pages, once
/// the client's quota-wait budget has passed since the call began ([`Error::Timeout`]).
/// After an error the iteration is over, and [`Items::failure`] tells why.
pub struct Items {
    pages: Pages,
    buffered: VecDeque<serde_json::Value>,
}

impl std::fmt::Debug for Items {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Items")
            .field("buffered", &self.buffered.len())
            .field("pages", &self.pages)
            .finish()
    }
}

impl Items {
    pub(crate) fn new(pages: Pages) -> Self {
        Self {
            pages,
            buffered: VecDeque::new(),
        }
    }

    /// The pages underneath, for callers that take whole pages from the same run.
    pub(crate) fn pages_mut(&mut self) -> &mut Pages {
        &mut self.pages
    }

    /// The error that ended the iteration, if one did.
    pub fn failure(&self) -> Option<&Error> {
        self.pages.failure()
    }

    /// Ends a run of pages without items that outlasted the call's budget (each page's
    /// send checks the request's cancel itself).
    fn check_between_pages(&mut self, started: Instant, empty: u64) -> Result<(), Error> {
        let budget = self.pages.client.core.policy.max_quota_wait;
        if Instant::now() >= bounds::instant_after(started, budget) {
            let e = Error::Timeout(
                format!(
                    "{empty} pages in a row held no items for longer than the quota-wait budget of {} s",
                    budget.as_secs_f64()
                ),
                Box::default(),
            );
            self.pages.next = None;
            self.pages.failure = Some(e.clone());
            return Err(e);
        }
        Ok(())
    }
}

impl Iterator for Items {
    type Item = Result<serde_json::Value, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let started = Instant::now();
        let mut empty = 0;
        loop {
            if let Some(item) = self.buffered.pop_front() {
                return Some(Ok(item));
            }
            if empty > 0 {
                if let Err(e) = self.check_between_pages(started, empty) {
                    return Some(Err(e));
                }
            }
            match self.pages.next_page()? {
                Ok((_, mut v)) => match v.get_mut("value").map(serde_json::Value::take) {
                    Some(serde_json::Value::Array(items)) => self.buffered.extend(items),
                    _ => {
                        let e = Error::InvalidArgument("a page has no \"value\" array".into());
                        self.pages.next = None;
                        self.pages.failure = Some(e.clone());
                        return Some(Err(e));
                    }
                },
                Err(e) => return Some(Err(e)),
            }
            empty += 1;
        }
    }
}
