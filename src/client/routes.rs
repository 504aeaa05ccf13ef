//! Which quota a request falls under: the published limits of the Defender for Endpoint
//! API, by method and path, and the bucket key that shares them between callers.

use crate::limiter::Rate;
use std::time::Duration;

const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// One line of a route table: requests that match `method` (any when `None`) and
/// `pattern` share the quota `class` with the limits `rates`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The HTTP method (upper case), or `None` for any.
    pub method: Option<String>,
    /// The path, where a segment `*` or `{name}` stands for any one segment:
    /// `/api/machines/{id}/isolate`.
    pub pattern: String,
    /// The quota class: requests of one class share one bucket per tenant and app.
    pub class: String,
    /// The limits that apply together.
    pub rates: Vec<Rate>,
    /// At most this many calls of the route under way at once per tenant and app (of one
    /// client); the others wait their turn. `None`: no cap.
    pub max_in_flight: Option<u32>,
}

impl Route {
    /// A route of `class` with `rates`.
    pub fn new(method: Option<&str>, pattern: &str, class: &str, rates: Vec<Rate>) -> Self {
        Self {
            method: method.map(str::to_ascii_uppercase),
            pattern: pattern.to_string(),
            class: class.to_string(),
            rates,
            max_in_flight: None,
        }
    }

    /// Caps the calls of this route under way at once (`None`: no cap).
    pub fn with_max_in_flight(mut self, max: Option<u32>) -> Self {
        self.max_in_flight = max;
        self
    }

    /// True when a request of `method` to `path` (without query) falls under this route.
    /// Paths compare without regard to case, as the service treats them.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        if self
            .method
            .as_deref()
            .is_some_and(|m| !m.eq_ignore_ascii_case(method))
        {
            return false;
        }
        let mut want = self.pattern.trim_matches('/').split('/');
        let mut got = path.trim_matches('/').split('/');
        loop {
            match (want.next(), got.next()) {
                (None, None) => return true,
                (Some(w), Some(s)) if is_wildcard(w) && !s.is_empty() => {}
                (Some(w), Some(g)) if w.eq_ignore_ascii_case(g) => {}
                _ => return false,
            }
        }
    }
}

/// A request path as the server routes it: percent-escapes of unreserved characters
/// decoded (`%72` is `r`; RFC 3986 6.2.2.2), empty segments collapsed (`//`), and dot
/// segments resolved (`/a/./b/../c` is `/a/c`, never above the root; RFC 3986 5.2.4).
/// Other escapes stay as they are. The path has no query.
pub fn normalize_path(path: &str) -> String {
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', h, l]) => hex(*h).zip(hex(*l)).map(|(h, l)| (h * 16 + l) as u8),
            _ => None,
        };
        match escaped {
            Some(b) if unreserved(b) => {
                decoded.push(b);
                i += 3;
            }
            _ => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    // Only ASCII escapes were replaced by ASCII bytes: still UTF-8.
    let decoded = String::from_utf8_lossy(&decoded);
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    format!("/{}", segments.join("/"))
}

fn is_wildcard(segment: &str) -> bool {
    segment == "*" || (segment.len() > 2 && segment.starts_with('{') && segment.ends_with('}'))
}

/// The route table: user routes first (the latest added wins), then the built-in ones,
/// then the default class.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Route>,
    default_rates: Vec<Rate>,
}

/// The published limit of live response sessions under way at once.
pub const LIVE_RESPONSE_SESSIONS: u32 = 25;

/// The class of requests that no route names.
pub const DEFAULT_CLASS: &str = "default";

/// The default limits of the API: 100 calls per minute and 1,500 per hour.
pub fn default_rates() -> Vec<Rate> {
    vec![Rate::new(100, MIN), Rate::new(1500, HOUR)]
}

impl Default for RouteTable {
    fn default() -> Self {
        Self::defender()
    }
}

fn r(m: &str, p: &str, class: &str, rates: &[(u32, Duration)]) -> Route {
    Route::new(
        Some(m),
        p,
        class,
        rates.iter().map(|&(c, w)| Rate::new(c, w)).collect(),
    )
}

/// Hosts of Microsoft Graph (commercial, US government, DoD, China).
const GRAPH_HOSTS: [&str; 4] = [
    "graph.microsoft.com",
    "graph.microsoft.us",
    "dod-graph.microsoft.us",
    "microsoftgraph.chinacloudapi.cn",
];

impl RouteTable {
    /// The built-in table for an API base URL, chosen by its host:
    ///
    /// - Microsoft Graph (`graph.microsoft.com` and its government twins): [`Self::graph`];
    /// - the Defender for Endpoint hosts `*.securitycenter.microsoft.com` and
    ///   `*.securitycenter.microsoft.us`: [`Self::mde`];
    /// - anything else, `api.security.microsoft.com` and its regions included (they serve
    ///   both APIs), a simulator, a proxy: [`Self::defender`], MDE and XDR together.
    pub fn for_base_url(url: &str) -> Self {
        let host = url
            .split_once("://")
            .map_or(url, |(_, rest)| rest)
            .split(['/', '?', '#'])
            .next()
            .unwrap_or("");
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        let host = host.split(':').next().unwrap_or("").to_ascii_lowercase();
        let under = |domain: &str| host == domain || host.ends_with(&format!(".{domain}"));
        if GRAPH_HOSTS.iter().any(|d| host == *d) {
            Self::graph()
        } else if under("securitycenter.microsoft.com") || under("securitycenter.microsoft.us") {
            Self::mde()
        } else {
            Self::defender()
        }
    }

    /// The published limits of Defender for Endpoint and of the Defender XDR endpoints
    /// (`api.security.microsoft.com` serves both): [`Self::mde`] and [`Self::xdr_routes`].
    pub fn defender() -> Self {
        let mut t = Self::mde();
        t.routes.extend(Self::xdr_routes());
        t
    }

    /// The routes of Defender XDR: incidents (50/min + 1,500/h, for GET and PATCH) and
    /// advanced hunting `POST /api/advancedhunting/run` (45/min).
    pub fn xdr_routes() -> Vec<Route> {
        let incidents = [(50, MIN), (1500, HOUR)];
        vec![
            r("GET", "/api/incidents", "incidents", &incidents),
            r("GET", "/api/incidents/*", "incidents", &incidents),
            r("PATCH", "/api/incidents/*", "incidents", &incidents),
            r(
                "POST",
                "/api/advancedhunting/run",
                "xdr_hunting",
                &[(45, MIN)],
            ),
        ]
    }

    /// The limits of the Microsoft Graph security API (`v1.0` and `beta`):
    ///
    /// - `POST /security/runHuntingQuery`: 45/min, as Graph's advanced hunting page states;
    /// - `/security/alerts_v2` and `/security/incidents` (lists, items, PATCH): 50/min +
    ///   1,500/h. Graph publishes no per-endpoint figure for these; they are served by the
    ///   same back end as Defender XDR's incidents API, so its limits are assumed.
    ///
    /// Other Graph requests fall in the default class.
    pub fn graph() -> Self {
        let xdr = [(50, MIN), (1500, HOUR)];
        let mut routes = Vec::new();
        for v in ["v1.0", "beta"] {
            routes.push(r(
                "POST",
                &format!("/{v}/security/runHuntingQuery"),
                "graph_hunting",
                &[(45, MIN)],
            ));
            for (what, class) in [
                ("alerts_v2", "graph_alerts"),
                ("incidents", "graph_incidents"),
            ] {
                routes.push(r("GET", &format!("/{v}/security/{what}"), class, &xdr));
                routes.push(r("GET", &format!("/{v}/security/{what}/*"), class, &xdr));
                routes.push(r("PATCH", &format!("/{v}/security/{what}/*"), class, &xdr));
            }
        }
        Self {
            routes,
            default_rates: default_rates(),
        }
    }

    /// The published limits of the Defender for Endpoint API alone.
    // Long because it is the table itself, one entry per published limit, in the order of
    // the documentation: read in one piece, it can be checked against that page.
    pub fn mde() -> Self {
        let export_json = [(30, MIN), (1000, HOUR)];
        let export_files = [(5, MIN), (20, HOUR)];
        let routes = vec![
            r(
                "POST",
                "/api/advancedqueries/run",
                "hunting",
                &[(45, MIN), (1500, HOUR)],
            ),
            r(
                "POST",
                "/api/alerts/batchUpdate",
                "alerts_batch_update",
                &[(10, MIN), (500, HOUR)],
            ),
            r(
                "POST",
                "/api/machines/*/startInvestigation",
                "start_investigation",
                &[(50, HOUR)],
            ),
            r(
                "GET",
                "/api/machineactions/*/getPackageUri",
                "package_uri",
                &[(2, MIN), (120, HOUR)],
            ),
            r(
                "POST",
                "/api/machines/*/runliveresponse",
                "live_response",
                &[(10, MIN)],
            )
            .with_max_in_flight(Some(LIVE_RESPONSE_SESSIONS)),
            r(
                "POST",
                "/api/indicators/import",
                "indicators_import",
                &[(30, MIN)],
            ),
            r(
                "POST",
                "/api/indicators/BatchDelete",
                "indicators_batch_delete",
                &[(30, MIN), (1500, HOUR)],
            ),
            r(
                "GET",
                "/api/machines/SoftwareVulnerabilitiesByMachine",
                "export_json",
                &export_json,
            ),
            r(
                "GET",
                "/api/machines/SoftwareInventoryByMachine",
                "export_json",
                &export_json,
            ),
            r(
                "GET",
                "/api/machines/SoftwareInventoryNoProductCodeByMachine",
                "export_json",
                &export_json,
            ),
            r(
                "GET",
                "/api/machines/SecureConfigurationsAssessmentByMachine",
                "export_json",
                &export_json,
            ),
            r(
                "GET",
                "/api/machines/BaselineComplianceAssessmentByMachine",
                "export_json",
                &export_json,
            ),
            r(
                "GET",
                "/api/machines/SoftwareVulnerabilityChangesByMachine",
                "export_json",
                &export_json,
            ),
            r(
                "GET",
                "/api/machines/SoftwareVulnerabilitiesExport",
                "export_files",
                &export_files,
            ),
            r(
                "GET",
                "/api/machines/SoftwareInventoryExport",
                "export_files",
                &export_files,
            ),
            r(
                "GET",
                "/api/machines/SoftwareInventoryNoProductCodeExport",
                "export_files",
                &export_files,
            ),
            r(
                "GET",
                "/api/machines/SecureConfigurationsAssessmentExport",
                "export_files",
                &export_files,
            ),
            r(
                "GET",
                "/api/machines/BaselineComplianceAssessmentExport",
                "export_files",
                &export_files,
            ),
        ];
        Self {
            routes,
            default_rates: default_rates(),
        }
    }

    /// Replaces the limits of requests that no route names.
    pub fn set_default_rates(&mut self, rates: Vec<Rate>) {
        self.default_rates = rates;
    }

    /// The limits of requests that no route names.
    pub fn default_rates(&self) -> &[Rate] {
        &self.default_rates
    }

    /// Adds a route ahead of all others. A route with the same method and pattern as an
    /// existing one replaces it.
    pub fn add(&mut self, route: Route) {
        self.routes.retain(|r| {
            !(r.method == route.method && r.pattern.eq_ignore_ascii_case(&route.pattern))
        });
        self.routes.insert(0, route);
    }

    /// The routes, in the order they are tried.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The class and limits of a request of `method` to `path`.
    pub fn lookup(&self, method: &str, path: &str) -> (&str, &[Rate]) {
        self.limits(self.find(method, path))
    }

    /// The class and limits of requests under `route`, found by [`Self::find`] (`None`:
    /// requests no route names).
    pub(crate) fn limits<'a>(&'a self, route: Option<&'a Route>) -> (&'a str, &'a [Rate]) {
        match route {
            Some(r) => (&r.class, &r.rates),
            None => (DEFAULT_CLASS, &self.default_rates),
        }
    }

    /// The route a request of `method` to `path` falls under, if any names it. The path is
    /// compared as the server routes it ([`normalize_path`]): `/api/x/../advancedqueries/run`
    /// and `/api//advancedqueries/%72un` are advanced hunting too.
    pub fn find(&self, method: &str, path: &str) -> Option<&Route> {
        let path = normalize_path(path);
        self.routes.iter().find(|r| r.matches(method, &path))
    }

    /// Caps the calls under way at once of requests of `method` (any when `None`) to
    /// `pattern` (`None`: lifts the cap). The route with exactly that method and pattern
    /// gets the cap; without one, a route is added ahead that keeps the class and limits
    /// such requests had, so that the quota stays shared as before.
    pub fn set_max_in_flight(&mut self, method: Option<&str>, pattern: &str, max: Option<u32>) {
        let method_up = method.map(str::to_ascii_uppercase);
        if let Some(r) = self
            .routes
            .iter_mut()
            .find(|r| r.method == method_up && r.pattern.eq_ignore_ascii_case(pattern))
        {
            r.max_in_flight = max;
            return;
        }
        let (class, rates) = self.lookup(method.unwrap_or("GET"), pattern);
        let route = Route::new(method, pattern, class, rates.to_vec()).with_max_in_flight(max);
        self.routes.insert(0, route);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check_path(path: &str) {
        let t = RouteTable::defender();
        let normal = normalize_path(path);
        assert!(normal.starts_with('/'), "{path:?} -> {normal:?}");
        assert!(!normal[1..].contains("//"), "{path:?} -> {normal:?}");
        assert!(
            normal.split('/').all(|s| s != "." && s != ".."),
            "{path:?} -> {normal:?}"
        );
        assert_eq!(normalize_path(&normal), normal, "not idempotent: {path:?}");
        for method in ["GET", "POST", "PATCH"] {
            assert_eq!(
                t.lookup(method, path),
                t.lookup(method, &normal),
                "{path:?}"
            );
            assert_eq!(
                super::super::is_hunting_query(method, path),
                super::super::is_hunting_query(method, &normal),
                "{path:?}"
            );
        }
        Route::new(None, path, "x", Vec::new()).matches("GET", path);
    }

    #[test]
    fn fuzz_request_path_corpus() {
        for (_, path) in crate::fuzz::corpus_text("request-path") {
            check_path(&path);
        }
    }

    proptest! {
        #![proptest_config(crate::fuzz::config())]

        #[test]
        fn fuzz_request_paths(
            parts in proptest::collection::vec(prop_oneof![
                Just("/"), Just("."), Just(".."), Just("%"), Just("%2E"), Just("%2e"), Just("%2F"),
                Just("%72"), Just("%7"), Just("api"), Just("advancedqueries"), Just("run"),
                Just("machines"), Just("runliveresponse"), Just("{id}"), Just("*"), Just("é"),
            ], 0..24),
            noise in ".{0,12}",
        ) {
            check_path(&parts.concat());
            check_path(&format!("{}{noise}", parts.concat()));
        }
    }

    #[test]
    fn requests_find_their_published_limits() {
        let t = RouteTable::defender();
        let (class, rates) = t.lookup("POST", "/api/advancedqueries/run");
        assert_eq!(class, "hunting");
        assert_eq!(rates, &[Rate::new(45, MIN), Rate::new(1500, HOUR)]);
        assert_eq!(
            t.lookup("post", "/API/Machines/abc/runLiveResponse").0,
            "live_response"
        );
        assert_eq!(t.lookup("GET", "/api/machines").0, DEFAULT_CLASS);
        assert_eq!(t.lookup("GET", "/api/machines/abc").0, DEFAULT_CLASS);
        assert_eq!(t.lookup("GET", "/api/advancedqueries/run").0, DEFAULT_CLASS);
        assert_eq!(
            t.lookup("GET", "/api/machines//getPackageUri").0,
            DEFAULT_CLASS
        );
        assert_eq!(t.lookup("PATCH", "/api/incidents/42").0, "incidents");
        assert_eq!(
            t.lookup("GET", "/api/machines").1,
            default_rates().as_slice()
        );
    }

    #[test]
    fn paths_are_routed_as_the_server_reads_them() {
        let t = RouteTable::defender();
        // Each of these reaches advanced hunting on the server; all were once "default".
        for path in [
            "/api/advancedqueries/run",
            "/api//advancedqueries/run",
            "//api/advancedqueries//run/",
            "/api/machines/../advancedqueries/run",
            "/api/./advancedqueries/./run",
            "/api/x/y/../../advancedqueries/run",
            "/../../api/advancedqueries/run",
            "/api/advancedqueries/%72un",
            "/api/%61dvancedqueries/run",
            "/%61%70%69/advancedqueries/run",
            "/api/machines/%2E%2E/advancedqueries/run",
            "/api/machines/%2e%2e/advancedqueries/run",
            "/api/%2E/advancedqueries/run",
        ] {
            assert_eq!(t.lookup("POST", path).0, "hunting", "{path}");
            assert!(super::super::is_hunting_query("POST", path), "{path}");
        }
        // Escapes of reserved characters are not separators.
        assert_eq!(normalize_path("/api/a%2Fb"), "/api/a%2Fb");
        assert_eq!(
            t.lookup("POST", "/api%2Fadvancedqueries%2Frun").0,
            DEFAULT_CLASS
        );
        assert_eq!(normalize_path("/a/%zz/%4"), "/a/%zz/%4");
        assert_eq!(normalize_path("/Grüße/%C3%BC"), "/Grüße/%C3%BC");
        assert_eq!(normalize_path(""), "/");
        assert_eq!(
            t.lookup("POST", "/api/machines/m1/../m2/runliveresponse").0,
            "live_response"
        );
    }

    #[test]
    fn the_table_follows_the_host() {
        let graph = RouteTable::for_base_url("https://graph.microsoft.com/");
        assert_eq!(
            graph.lookup("POST", "/v1.0/security/runHuntingQuery"),
            ("graph_hunting", [Rate::new(45, MIN)].as_slice())
        );
        assert_eq!(
            graph.lookup("PATCH", "/beta/security/incidents/7").1,
            &[Rate::new(50, MIN), Rate::new(1500, HOUR)]
        );
        assert_eq!(
            graph.lookup("GET", "/v1.0/security/alerts_v2").0,
            "graph_alerts"
        );
        assert_eq!(graph.lookup("GET", "/v1.0/users").0, DEFAULT_CLASS);
        assert_eq!(
            graph.lookup("POST", "/api/advancedqueries/run").0,
            DEFAULT_CLASS
        );
        for url in [
            "https://api.security.microsoft.com",
            "https://eu.api.security.microsoft.com/api",
            "http://127.0.0.1:8080",
        ] {
            let t = RouteTable::for_base_url(url);
            assert_eq!(t.lookup("GET", "/api/incidents").0, "incidents", "{url}");
            assert_eq!(
                t.lookup("POST", "/api/advancedhunting/run").0,
                "xdr_hunting"
            );
            assert_eq!(t.lookup("POST", "/api/advancedqueries/run").0, "hunting");
        }
        for url in [
            "https://api.securitycenter.microsoft.com",
            "https://api-gov.securitycenter.microsoft.us:443",
        ] {
            let t = RouteTable::for_base_url(url);
            assert_eq!(t.lookup("GET", "/api/incidents").0, DEFAULT_CLASS, "{url}");
            assert_eq!(t.lookup("POST", "/api/advancedqueries/run").0, "hunting");
        }
        assert_eq!(
            RouteTable::for_base_url("https://graph.microsoft.us")
                .lookup("POST", "/v1.0/security/runHuntingQuery")
                .0,
            "graph_hunting"
        );
    }

    #[test]
    fn in_flight_caps_keep_the_class_and_limits() {
        let mut t = RouteTable::defender();
        let live = t.find("POST", "/api/machines/m1/runliveresponse").unwrap();
        assert_eq!(live.max_in_flight, Some(LIVE_RESPONSE_SESSIONS));
        t.set_max_in_flight(Some("post"), "/api/machines/*/runliveresponse", None);
        assert_eq!(
            t.find("POST", "/api/machines/m1/runliveresponse")
                .unwrap()
                .max_in_flight,
            None
        );
        // A pattern of its own keeps the class (and so the bucket) it had.
        t.set_max_in_flight(Some("POST"), "/api/machines/{id}/isolate", Some(5));
        let iso = t.find("POST", "/api/machines/m1/isolate").unwrap();
        assert_eq!(
            (iso.class.as_str(), iso.max_in_flight),
            (DEFAULT_CLASS, Some(5))
        );
        assert_eq!(iso.rates, default_rates());
    }

    #[test]
    fn user_routes_come_first_and_replace_their_twin() {
        let mut t = RouteTable::defender();
        t.add(Route::new(
            Some("post"),
            "/api/advancedqueries/run",
            "mine",
            vec![Rate::new(1, MIN)],
        ));
        assert_eq!(t.lookup("POST", "/api/advancedqueries/run").0, "mine");
        t.add(Route::new(
            Some("POST"),
            "/api/advancedqueries/run",
            "again",
            vec![Rate::new(2, MIN)],
        ));
        assert_eq!(t.lookup("POST", "/api/advancedqueries/run").0, "again");
        t.add(Route::new(
            None,
            "/api/machines",
            "any",
            vec![Rate::new(3, MIN)],
        ));
        assert_eq!(t.lookup("DELETE", "/api/machines").0, "any");
        t.add(Route::new(
            None,
            "/api/machines/{id}/isolate",
            "iso",
            vec![Rate::new(3, MIN)],
        ));
        assert_eq!(t.lookup("POST", "/api/machines/abc/isolate").0, "iso");
        assert_eq!(t.lookup("POST", "/api/machines/isolate").0, DEFAULT_CLASS);
        t.set_default_rates(vec![Rate::new(7, MIN)]);
        assert_eq!(t.lookup("GET", "/api/alerts").1, &[Rate::new(7, MIN)]);
    }
}
