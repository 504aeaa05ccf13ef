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
}

impl Route {
    /// A route of `class` with `rates`.
    pub fn new(method: Option<&str>, pattern: &str, class: &str, rates: Vec<Rate>) -> Self {
        Self {
            method: method.map(str::to_ascii_uppercase),
            pattern: pattern.to_string(),
            class: class.to_string(),
            rates,
        }
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

impl RouteTable {
    /// The published limits of Defender for Endpoint and the Defender XDR endpoints.
    pub fn defender() -> Self {
        let r = |m: &str, p: &str, class: &str, rates: &[(u32, Duration)]| {
            Route::new(
                Some(m),
                p,
                class,
                rates.iter().map(|&(c, w)| Rate::new(c, w)).collect(),
            )
        };
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
            ),
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
            r(
                "GET",
                "/api/incidents",
                "incidents",
                &[(50, MIN), (1500, HOUR)],
            ),
            r(
                "GET",
                "/api/incidents/*",
                "incidents",
                &[(50, MIN), (1500, HOUR)],
            ),
            r(
                "PATCH",
                "/api/incidents/*",
                "incidents",
                &[(50, MIN), (1500, HOUR)],
            ),
            r(
                "POST",
                "/api/advancedhunting/run",
                "xdr_hunting",
                &[(45, MIN)],
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
        match self.routes.iter().find(|r| r.matches(method, path)) {
            Some(r) => (&r.class, &r.rates),
            None => (DEFAULT_CLASS, &self.default_rates),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
