//! The simulator's API endpoints: authentication by bearer token, the quota, and the
//! machines, alerts, actions, live response and advanced hunting answers.

use super::*;

impl Core {
    /// The client id of a valid, unexpired bearer token.
    fn authenticate(
        &self,
        st: &State,
        header: Option<&str>,
        now: Instant,
    ) -> Result<String, &'static str> {
        let header = header.ok_or("Authorization header is missing.")?;
        let token = match header.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => return Err("Authorization header is not a bearer token."),
        };
        let known = st.tokens.get(token).ok_or("The access token is invalid.")?;
        if known.expires <= now {
            return Err("The access token has expired.");
        }
        Ok(known.client_id.clone())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn api(
        &self,
        st: &mut State,
        route: &Route,
        query: Option<&str>,
        rq: &Incoming<'_>,
        path: &str,
        now: Instant,
        request_id: &str,
        entry: &mut LogEntry,
    ) -> Reply {
        let client = match self.authenticate(st, rq.authorization, now) {
            Ok(client) => client,
            Err(why) => {
                return Reply::error(401, "Unauthorized", why, request_id)
                    .header("WWW-Authenticate", "Bearer error=\"invalid_token\"");
            }
        };
        entry.client_id = Some(client.clone());
        let class = route.class();
        if let Err(limit) = self.admit(st, &client, class, now, entry) {
            let wait = entry.retry_after.unwrap_or_default();
            return self.throttled(st.live.retry_after_style, class, wait, limit, request_id);
        }
        match route {
            Route::Machines => {
                let page = paging(query, self.config.page_size_max);
                match page {
                    Ok(page) => self.page(&st.machines, &page, path, "Machines"),
                    Err(why) => Reply::error(400, "ODataError", &why, request_id),
                }
            }
            Route::Alerts => match paging(query, self.config.page_size_max) {
                Ok(page) => self.page(&st.alerts, &page, path, "Alerts"),
                Err(why) => Reply::error(400, "ODataError", &why, request_id),
            },
            Route::Machine(id) => match st.machine_index.get(&id.to_ascii_lowercase()) {
                Some(&i) => {
                    Reply::json(200, &self.with_context(&st.machines[i], "Machines/$entity"))
                }
                None => machine_not_found(id, request_id),
            },
            Route::Alert(id) => match st.alerts.iter().find(|a| a.id == *id) {
                Some(alert) => Reply::json(200, &self.with_context(alert, "Alerts/$entity")),
                None => Reply::error(
                    404,
                    "ResourceNotFound",
                    &format!("Alert {id} was not found"),
                    request_id,
                ),
            },
            Route::Isolate(id) => self.isolate(st, id, &client, rq.body, now, request_id),
            Route::Tags(id) => self.tag(st, id, rq.body, request_id),
            Route::LiveResponse(id) => self.live_response(st, id, &client, rq.body, request_id),
            Route::Hunting => self.hunt(st, rq.body, request_id),
            Route::BatchUpdateAlerts => batch_update(rq.body, request_id),
            Route::Token { .. } | Route::Unrouted => unreachable!("routed before"),
        }
    }

    /// The 429, with the hint the configured style gives.
    fn throttled(
        &self,
        style: RetryAfterStyle,
        class: &str,
        wait: Duration,
        limit: RealLimit,
        request_id: &str,
    ) -> Reply {
        // Advanced hunting answers with the status as its code.
        let code = if class == CLASS_HUNTING {
            "429"
        } else {
            "TooManyRequests"
        };
        let message = match style {
            RetryAfterStyle::None => "Too many requests. Please try again later.".to_owned(),
            _ => format!(
                "API calls quota exceeded! maximum allowed {} per {}",
                limit.calls,
                timespan(limit.window)
            ),
        };
        let reply = Reply::error(429, code, &message, request_id);
        match style {
            RetryAfterStyle::Seconds => reply
                .header("Retry-After", ceil_secs(wait).to_string())
                .header("retry-after-ms", ceil_millis(wait).to_string()),
            RetryAfterStyle::HttpDate => {
                let at = SystemTime::now() + wait;
                let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
                let whole = UNIX_EPOCH + Duration::from_secs(ceil_secs(since));
                reply.header("Retry-After", httpdate::fmt_http_date(whole))
            }
            RetryAfterStyle::Milliseconds => {
                reply.header("retry-after-ms", ceil_millis(wait).to_string())
            }
            RetryAfterStyle::XmsMilliseconds => {
                reply.header("x-ms-retry-after-ms", ceil_millis(wait).to_string())
            }
            RetryAfterStyle::BodyOnly | RetryAfterStyle::None => reply,
        }
    }

    fn with_context<T: serde::Serialize>(&self, item: &T, entity: &str) -> Value {
        let mut value = serde_json::to_value(item).expect("data always serializes");
        if let Value::Object(map) = &mut value {
            map.insert(
                "@odata.context".to_owned(),
                Value::String(format!("{}/api/$metadata#{entity}", self.base_url)),
            );
        }
        value
    }

    fn page<T: serde::Serialize>(
        &self,
        items: &[T],
        page: &Page<'_>,
        path: &str,
        entity: &str,
    ) -> Reply {
        let from = page.skip.min(items.len());
        let to = from.saturating_add(page.top).min(items.len());
        let mut body = json!({
            "@odata.context": format!("{}/api/$metadata#{entity}", self.base_url),
            "value": &items[from..to],
        });
        if to < items.len() && page.top > 0 {
            // The client's own parameters, byte for byte, then the next $skip.
            let mut query = page.kept.join("&");
            if !query.is_empty() {
                query.push('&');
            }
            query.push_str(&format!("$skip={to}"));
            body["@odata.nextLink"] = Value::String(format!("{}{path}?{query}", self.base_url));
        }
        Reply::json(200, &body)
    }

    fn isolate(
        &self,
        st: &mut State,
        id: &str,
        client: &str,
        body: &[u8],
        now: Instant,
        request_id: &str,
    ) -> Reply {
        let (comment, kind) = match isolation_request(body) {
            Ok(request) => request,
            Err(why) => return invalid_body(why, request_id),
        };
        let Some(&index) = st.machine_index.get(&id.to_ascii_lowercase()) else {
            return machine_not_found(id, request_id);
        };
        let machine_id = st.machines[index].id.clone();
        let pending = self.config.real(self.config.action_pending);
        if !pending.is_zero()
            && st
                .isolated_at
                .get(&machine_id)
                .is_some_and(|&at| now < at + pending)
        {
            return Reply::error(
                400,
                "ActiveRequestAlreadyExists",
                "Action is already in progress",
                request_id,
            );
        }
        st.isolated_at.insert(machine_id.clone(), now);
        *st.actions
            .entry((machine_id.clone(), "isolate".to_owned()))
            .or_default() += 1;
        let at = data::iso_now();
        Reply::json(
            201,
            &json!({
                "@odata.context": format!("{}/api/$metadata#MachineActions/$entity", self.base_url),
                "id": new_uuid(&mut st.id_rng),
                "type": "Isolate",
                "title": null,
                "requestor": client,
                "requestorComment": comment,
                "status": "Pending",
                "isolationType": kind,
                "machineId": machine_id,
                "computerDnsName": st.machines[index].computer_dns_name,
                "creationDateTimeUtc": at,
                "lastUpdateDateTimeUtc": at,
                "relatedFileInfo": null,
            }),
        )
    }

    fn tag(&self, st: &mut State, id: &str, body: &[u8], request_id: &str) -> Reply {
        let body: Value = match serde_json::from_slice(body) {
            Ok(value @ Value::Object(_)) => value,
            _ => return invalid_body("The body must be a JSON object.", request_id),
        };
        let value = match body.get("Value").and_then(Value::as_str) {
            Some(v) if !v.trim().is_empty() => v.to_owned(),
            _ => return invalid_body("Value is required.", request_id),
        };
        let add = match body.get("Action").and_then(Value::as_str) {
            Some("Add") => true,
            Some("Remove") => false,
            _ => return invalid_body("Action must be Add or Remove.", request_id),
        };
        let Some(&index) = st.machine_index.get(&id.to_ascii_lowercase()) else {
            return machine_not_found(id, request_id);
        };
        let machine = &mut st.machines[index];
        if add {
            if !machine.machine_tags.contains(&value) {
                machine.machine_tags.push(value);
            }
        } else {
            machine.machine_tags.retain(|t| *t != value);
        }
        let machine_id = machine.id.clone();
        *st.actions
            .entry((machine_id, "tag".to_owned()))
            .or_default() += 1;
        Reply::json(
            200,
            &self.with_context(&st.machines[index], "Machines/$entity"),
        )
    }

    fn live_response(
        &self,
        st: &mut State,
        id: &str,
        client: &str,
        body: &[u8],
        request_id: &str,
    ) -> Reply {
        let commands = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("Commands").and_then(Value::as_array).cloned());
        let Some(commands) = commands.filter(|c| !c.is_empty()) else {
            return invalid_body("Commands must be a non-empty array.", request_id);
        };
        let Some(&index) = st.machine_index.get(&id.to_ascii_lowercase()) else {
            return machine_not_found(id, request_id);
        };
        let machine_id = st.machines[index].id.clone();
        *st.actions
            .entry((machine_id.clone(), "liveresponse".to_owned()))
            .or_default() += 1;
        let at = data::iso_now();
        let mut reply = Reply::json(
            201,
            &json!({
                "@odata.context": format!("{}/api/$metadata#MachineActions/$entity", self.base_url),
                "id": new_uuid(&mut st.id_rng),
                "type": "LiveResponse",
                "requestor": client,
                "status": "Pending",
                "machineId": machine_id,
                "commands": commands,
                "creationDateTimeUtc": at,
                "lastUpdateDateTimeUtc": at,
            }),
        );
        reply.delay = self.config.real(self.config.live_response_delay);
        reply
    }

    fn hunt(&self, st: &State, body: &[u8], request_id: &str) -> Reply {
        let query = match serde_json::from_slice::<Value>(body) {
            Ok(v) => v.get("Query").and_then(Value::as_str).map(str::to_owned),
            Err(_) => None,
        };
        let Some(query) = query.filter(|q| !q.trim().is_empty()) else {
            return Reply::error(400, "BadRequest", "Query is required.", request_id);
        };
        // Markers that make the service's two "ran, but failed" answers on demand.
        let failed = if query.contains("quotagate:too-large") {
            Some(
                "Query execution has exceeded the allowed result size. Optimize your query by taking fewer rows and/or fewer columns.",
            )
        } else if query.contains("quotagate:preempted") {
            Some("Query execution was preempted. Please try again later.")
        } else {
            None
        };
        if let Some(message) = failed {
            let mut reply = Reply::error(400, "BadRequest", message, request_id);
            reply.delay = self.config.real(self.config.hunting_delay);
            return reply;
        }
        let rows = take_count(&query)
            .unwrap_or(usize::MAX)
            .min(st.machines.len())
            .min(HUNTING_MAX_ROWS);
        let results: Vec<Value> = st.machines[..rows]
            .iter()
            .map(|m| {
                json!({
                    "Timestamp": m.last_seen,
                    "DeviceId": m.id,
                    "DeviceName": m.computer_dns_name,
                    "OSPlatform": m.os_platform,
                    "HealthStatus": m.health_status,
                })
            })
            .collect();
        let mut reply = Reply::json(
            200,
            &json!({
                "Schema": [
                    {"Name": "Timestamp", "Type": "DateTime"},
                    {"Name": "DeviceId", "Type": "String"},
                    {"Name": "DeviceName", "Type": "String"},
                    {"Name": "OSPlatform", "Type": "String"},
                    {"Name": "HealthStatus", "Type": "String"},
                ],
                "Results": results,
                "Stats": {
                    "ExecutionTime": self.config.hunting_delay.as_secs_f64(),
                    "dataset_statistics": [{"table_row_count": rows}],
                },
            }),
        );
        reply.delay = self.config.real(self.config.hunting_delay);
        reply
    }
}

fn batch_update(body: &[u8], request_id: &str) -> Reply {
    let ids = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("alertIds").and_then(Value::as_array).cloned());
    match ids {
        Some(ids) if !ids.is_empty() && ids.iter().all(Value::is_string) => Reply::empty(200),
        _ => invalid_body(
            "alertIds must be a non-empty array of alert ids.",
            request_id,
        ),
    }
}

fn invalid_body(message: &str, request_id: &str) -> Reply {
    Reply::error(400, "InvalidRequestBody", message, request_id)
}

fn machine_not_found(id: &str, request_id: &str) -> Reply {
    Reply::error(
        404,
        "ResourceNotFound",
        &format!("Machine {id} was not found"),
        request_id,
    )
}

/// Azure AD's error shape: `{"error","error_description","error_codes",...}`.
/// The comment and isolation type of an isolate request's body, or why it is refused.
fn isolation_request(body: &[u8]) -> Result<(String, &'static str), &'static str> {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
        return Err("The body must be a JSON object.");
    };
    let Some(comment) = body.get("Comment").and_then(Value::as_str) else {
        return Err("Comment is required.");
    };
    let kind = match body.get("IsolationType") {
        None | Some(Value::Null) => "Full",
        Some(Value::String(s)) => ["Full", "Selective", "UnManagedDevice"]
            .into_iter()
            .find(|k| k == s)
            .ok_or("IsolationType must be Full, Selective or UnManagedDevice.")?,
        Some(_) => return Err("IsolationType must be Full, Selective or UnManagedDevice."),
    };
    Ok((comment.to_owned(), kind))
}

/// `$top` and `$skip` of a list request, and the other parameters as received.
struct Page<'a> {
    top: usize,
    skip: usize,
    kept: Vec<&'a str>,
}

fn paging(query: Option<&str>, page_size_max: usize) -> Result<Page<'_>, String> {
    let mut page = Page {
        top: page_size_max,
        skip: 0,
        kept: Vec::new(),
    };
    for part in query.unwrap_or("").split('&') {
        if query.is_none() {
            break;
        }
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        let name = percent_decode(name, true);
        let number = || {
            percent_decode(value, true)
                .trim()
                .parse::<usize>()
                .map_err(|_| format!("Invalid value '{value}' for query option {name}."))
        };
        if name.eq_ignore_ascii_case("$skip") {
            page.skip = number()?;
            continue;
        }
        if name.eq_ignore_ascii_case("$top") {
            page.top = number()?.min(page_size_max);
        }
        page.kept.push(part);
    }
    Ok(page)
}

/// The `take N` or `limit N` of a KQL query, if any.
fn take_count(query: &str) -> Option<usize> {
    let words: Vec<&str> = query
        .split(|c: char| c.is_whitespace() || c == '|' || c == ';')
        .filter(|w| !w.is_empty())
        .collect();
    words.windows(2).find_map(|w| {
        (w[0].eq_ignore_ascii_case("take") || w[0].eq_ignore_ascii_case("limit"))
            .then(|| w[1].parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_keeps_raw_parameters() {
        let p = paging(Some("$filter=a%20eq%20'b'&%24top=5&$skip=10"), 100).unwrap();
        assert_eq!((p.top, p.skip), (5, 10));
        assert_eq!(p.kept, vec!["$filter=a%20eq%20'b'", "%24top=5"]);
        let p = paging(Some("$top=500"), 100).unwrap();
        assert_eq!(p.top, 100);
        assert!(paging(Some("$top=x"), 100).is_err());
        let p = paging(None, 7).unwrap();
        assert_eq!((p.top, p.skip, p.kept.len()), (7, 0, 0));
    }

    #[test]
    fn kql_take() {
        assert_eq!(take_count("DeviceInfo | take 5"), Some(5));
        assert_eq!(take_count("DeviceInfo|limit 7"), Some(7));
        assert_eq!(take_count("DeviceInfo"), None);
    }
}
