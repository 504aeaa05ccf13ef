//! Paging: follow `@odata.nextLink` exactly as given, every page through the limiter.

use super::{Client, Error, Request, Response};
use std::collections::VecDeque;

/// Pages of a list, as answers. An error status ends the iteration with [`Error::Http`].
pub struct Pages {
    client: Client,
    next: Option<Request>,
}

impl std::fmt::Debug for Pages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pages").field("next", &self.next).finish()
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
        Self {
            client,
            next: Some(first),
        }
    }

    /// The next page and its parsed JSON, or `None` after the last.
    pub fn next_page(&mut self) -> Option<Result<(Response, serde_json::Value), Error>> {
        let mut req = self.next.take()?;
        // One deadline bounds every page: fixed when the first page is sent.
        if let Some(d) = req.deadline {
            let b = d.fix(std::time::Instant::now());
            req.deadline = Some(super::deadline::Deadline::At { at: b.at, of: b.of });
        }
        let result = self
            .client
            .send(&req)
            .and_then(Response::error_for_status)
            .and_then(|r| {
                let v: serde_json::Value = r
                    .json()
                    .map_err(|e| Error::InvalidArgument(format!("a page is not JSON: {e}")))?;
                Ok((r, v))
            });
        if let Ok((_, v)) = &result {
            if let Some(link) = next_link(v) {
                // The same method, headers and cancel handle; the link replaces path and query.
                let mut n = req.clone();
                n.target = link.to_string();
                n.query.clear();
                self.next = Some(n);
            }
        }
        Some(result)
    }
}

impl Iterator for Pages {
    type Item = Result<Response, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_page().map(|r| r.map(|(resp, _)| resp))
    }
}

/// The items of `value` across all pages of a list.
pub struct Items {
    pages: Pages,
    buffered: VecDeque<serde_json::Value>,
}

impl std::fmt::Debug for Items {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Items")
            .field("buffered", &self.buffered.len())
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
}

impl Iterator for Items {
    type Item = Result<serde_json::Value, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.buffered.pop_front() {
                return Some(Ok(item));
            }
            match self.pages.next_page()? {
                Ok((_, mut v)) => match v.get_mut("value").map(serde_json::Value::take) {
                    Some(serde_json::Value::Array(items)) => self.buffered.extend(items),
                    _ => {
                        return Some(Err(Error::InvalidArgument(
                            "a page has no \"value\" array".into(),
                        )));
                    }
                },
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
