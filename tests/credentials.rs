//! Cloud presets, route tables, token providers, certificate credentials, concurrency caps
//! and the hunting run-time budget, against the local simulator where a server is needed.

use quotagate::client::{Client, Cloud};

#[test]
fn cloud_presets_resolve_to_their_hosts() {
    let client = |cloud: Cloud| {
        Client::builder()
            .cloud(cloud)
            .tenant_id("t")
            .client_id("c")
            .client_secret("s")
            .build()
            .unwrap()
    };
    let c = client(Cloud::Commercial);
    assert_eq!(c.base_url(), "https://api.securitycenter.microsoft.com");
    assert_eq!(
        c.token_url(),
        "https://login.microsoftonline.com/t/oauth2/v2.0/token"
    );
    assert_eq!(
        c.token_audience(),
        "https://api.securitycenter.microsoft.com/.default"
    );
    for (name, host) in [
        ("us", "us"),
        ("eu", "eu"),
        ("uk", "uk"),
        ("au", "au"),
        ("swa", "swa"),
        ("ina", "ina"),
        ("aea", "aea"),
    ] {
        let c = client(Cloud::from_name(name).unwrap());
        assert_eq!(
            c.base_url(),
            format!("https://{host}.api.security.microsoft.com")
        );
        assert!(
            c.token_url()
                .starts_with("https://login.microsoftonline.com/")
        );
        assert_eq!(
            c.token_audience(),
            "https://api.securitycenter.microsoft.com/.default"
        );
    }
    let gcc = client(Cloud::Gcc);
    assert_eq!(
        gcc.base_url(),
        "https://api-gcc.securitycenter.microsoft.us"
    );
    assert!(
        gcc.token_url()
            .starts_with("https://login.microsoftonline.com/")
    );
    assert_eq!(
        gcc.token_audience(),
        "https://api-gcc.securitycenter.microsoft.us/.default"
    );
    for cloud in [Cloud::GccHigh, Cloud::Dod] {
        let c = client(cloud);
        assert_eq!(c.base_url(), "https://api-gov.securitycenter.microsoft.us");
        assert_eq!(
            c.token_url(),
            "https://login.microsoftonline.us/t/oauth2/v2.0/token"
        );
        assert_eq!(
            c.token_audience(),
            "https://api-gov.securitycenter.microsoft.us/.default"
        );
    }
}

#[test]
fn explicit_settings_override_the_cloud_in_any_order() {
    let c = Client::builder()
        .base_url("https://example.test")
        .authority("https://login.example.test")
        .cloud(Cloud::GccHigh)
        .access_token("x")
        .build()
        .unwrap();
    assert_eq!(c.base_url(), "https://example.test");
    assert!(c.token_url().starts_with("https://login.example.test/"));
    // The cloud still names the audience.
    assert_eq!(
        c.token_audience(),
        "https://api-gov.securitycenter.microsoft.us/.default"
    );
    let c = Client::builder()
        .cloud(Cloud::Eu)
        .resource("https://api.security.microsoft.com")
        .access_token("x")
        .build()
        .unwrap();
    assert_eq!(c.token_audience(), "https://api.security.microsoft.com");
    assert!(c.token_url().ends_with("/oauth2/token"));
}

#[test]
fn the_base_url_picks_the_route_table() {
    use quotagate::client::{Route, RouteTable};
    use quotagate::limiter::Rate;
    use std::time::Duration;
    let b = Client::builder().base_url("https://graph.microsoft.com");
    assert_eq!(
        b.routes()
            .lookup("POST", "/v1.0/security/runHuntingQuery")
            .0,
        "graph_hunting"
    );
    let b = b.route(Route::new(
        Some("POST"),
        "/v1.0/security/runHuntingQuery",
        "mine",
        vec![Rate::new(1, Duration::from_secs(1))],
    ));
    assert_eq!(
        b.routes()
            .lookup("POST", "/v1.0/security/runHuntingQuery")
            .0,
        "mine"
    );
    let xdr = Client::builder().cloud(Cloud::Uk).routes();
    assert_eq!(xdr.lookup("GET", "/api/incidents").0, "incidents");
    assert_eq!(
        RouteTable::for_base_url(Cloud::Gcc.base_url())
            .lookup("POST", "/api/advancedqueries/run")
            .0,
        "hunting"
    );
}
