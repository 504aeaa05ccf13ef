//! `quotagate call`: one call, or every page of a list, through the client: the quota is
//! waited for, the token fetched and cached, 429s and transient failures retried.

use crate::exit::{self, Failure};
use quotagate::client::{Client, Credentials, DEFAULT_AUTHORITY, DEFAULT_BASE_URL, Request};
use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

pub const EXAMPLES: &str = "\
Credentials come from the environment: QUOTAGATE_TENANT_ID, QUOTAGATE_CLIENT_ID and
QUOTAGATE_CLIENT_SECRET (client credentials), or QUOTAGATE_ACCESS_TOKEN (a token
obtained elsewhere, used as is). The answer's JSON goes to stdout; errors go to stderr
with the HTTP status, the server's code and message and the correlation id.

Examples:
  quotagate call GET /api/machines --query '$top=10'
  quotagate call GET /api/machines --all --query \"\\$filter=healthStatus eq 'Active'\"
  quotagate call GET /api/alerts --all --array > alerts.json
  quotagate call POST /api/machines/{id}/tags --data '{\"Value\":\"triage\",\"Action\":\"Add\"}'
  quotagate call POST /api/advancedqueries/run --data @query.json
  quotagate call GET /api/machines --base-url https://api-gcc.securitycenter.microsoft.us

Exit codes:
  0  success
  1  the server answered with an error status, or paging could not go on
  2  usage or configuration error, including missing credentials
  3  still throttled when the quota budget (--max-wait, --max-attempts) ran out
  4  transport failure or timeout
  5  no access token (credentials refused, token endpoint unreachable)
  6  the shared quota store (--store) failed";

const METHODS: [&str; 5] = ["GET", "POST", "PATCH", "PUT", "DELETE"];

#[derive(clap::Args)]
pub struct Args {
    /// The HTTP method.
    #[arg(value_parser = method)]
    method: String,

    /// The path, such as /api/machines, or an absolute URL on the API host.
    path: String,

    /// Follow @odata.nextLink through every page and print each item of "value" as one
    /// JSON line.
    #[arg(long)]
    all: bool,

    /// With --all: print one JSON array of every item instead of one item per line.
    #[arg(long, requires = "all")]
    array: bool,

    /// The JSON body; @FILE reads it from a file, @- from stdin.
    #[arg(long, short = 'd', value_name = "JSON")]
    data: Option<String>,

    /// A query parameter, percent-encoded when sent; repeat for several.
    #[arg(long = "query", short = 'q', value_name = "NAME=VALUE", value_parser = name_value)]
    query: Vec<(String, String)>,

    /// The API's base URL.
    #[arg(long, env = "QUOTAGATE_BASE_URL", default_value = DEFAULT_BASE_URL)]
    base_url: String,

    /// The login authority that issues tokens.
    #[arg(long, env = "QUOTAGATE_AUTHORITY", default_value = DEFAULT_AUTHORITY)]
    authority: String,

    /// Accept http:// for a base URL or authority that is not a loopback host. The client
    /// secret and tokens then cross the network unencrypted: only behind a TLS-terminating
    /// proxy on a network you trust.
    #[arg(long)]
    allow_insecure_http: bool,

    /// The time limit of one HTTP exchange, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 300.0, value_parser = crate::positive)]
    timeout: f64,

    /// The longest the call may wait for quota in all (queue, 429 pauses), in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 900.0, value_parser = crate::positive)]
    max_wait: f64,

    /// Attempts per call, the first included.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100))]
    max_attempts: u32,

    /// Shares the quotas with every process that opens this store, so that a loop of
    /// `call` processes waits its turn across all of them: file:///path/state.q (one
    /// host) or redis://host:6379/0?prefix=qg (many hosts).
    #[arg(long, env = "QUOTAGATE_STORE", value_name = "URL")]
    store: Option<String>,
}

fn method(s: &str) -> Result<String, String> {
    let upper = s.to_ascii_uppercase();
    if METHODS.contains(&upper.as_str()) {
        Ok(upper)
    } else {
        Err(format!("expected one of {}, got {s:?}", METHODS.join(", ")))
    }
}

fn name_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((n, v)) if !n.is_empty() => Ok((n.to_string(), v.to_string())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

const TENANT: &str = "QUOTAGATE_TENANT_ID";
const CLIENT: &str = "QUOTAGATE_CLIENT_ID";
const SECRET: &str = "QUOTAGATE_CLIENT_SECRET";
const TOKEN: &str = "QUOTAGATE_ACCESS_TOKEN";

/// The credentials from the environment; a token wins over client credentials.
fn credentials() -> Result<Credentials, Failure> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if let Some(token) = var(TOKEN) {
        return Ok(Credentials::AccessToken(token.into()));
    }
    match (var(TENANT), var(CLIENT), var(SECRET)) {
        (Some(tenant_id), Some(client_id), Some(secret)) => Ok(Credentials::ClientSecret {
            tenant_id,
            client_id,
            secret: secret.into(),
        }),
        (tenant, client, secret) => {
            let unset: Vec<&str> = [(TENANT, tenant), (CLIENT, client), (SECRET, secret)]
                .into_iter()
                .filter(|(_, v)| v.is_none())
                .map(|(n, _)| n)
                .collect();
            Err(Failure::usage(format!(
                "missing credentials: set {TENANT}, {CLIENT} and {SECRET} \
                 (not set: {}), or {TOKEN}",
                unset.join(", ")
            )))
        }
    }
}

/// A flag's seconds as a duration; a number too large for one is a usage error.
fn seconds(secs: f64, flag: &str) -> Result<Duration, Failure> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| Failure::usage(format!("{flag} {secs} is too large a number of seconds")))
}

/// The body of `--data`: inline JSON, `@file` or `@-`; it must parse as JSON.
fn body(data: &str) -> Result<serde_json::Value, Failure> {
    let text = match data.strip_prefix('@') {
        Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| Failure::usage(format!("cannot read the body from stdin: {e}")))?;
            s
        }
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| Failure::usage(format!("cannot read the body from {path}: {e}")))?,
        None => data.to_string(),
    };
    serde_json::from_str(&text)
        .map_err(|e| Failure::usage(format!("--data is not valid JSON: {e}")))
}

pub fn run(args: &Args) -> Result<(), Failure> {
    let credentials = credentials()?;
    let mut request = Request::new(&args.method, &args.path);
    for (name, value) in &args.query {
        request = request.query(name, value);
    }
    if let Some(data) = &args.data {
        request = request.json(&body(data)?);
    }
    let client = Client::builder()
        .base_url(&args.base_url)
        .authority(&args.authority)
        .allow_insecure_http(args.allow_insecure_http)
        .credentials(credentials)
        .timeout(seconds(args.timeout, "--timeout")?)
        .connect_timeout(seconds(args.timeout.min(10.0), "--timeout")?)
        .max_quota_wait(seconds(args.max_wait, "--max-wait")?)
        .max_attempts(args.max_attempts);
    let client = match &args.store {
        Some(url) => client.store(url),
        None => client,
    }
    .build()
    .map_err(|e| match e {
        e @ quotagate::client::Error::Store(_) => Failure::from(e),
        e => Failure::usage(e.to_string()),
    })?;
    let result = if args.all {
        all_pages(&client, &request, args.array)
    } else {
        one(&client, &request)
    };
    match result {
        Err(Output::Client(e)) => Err(e.into()),
        Err(Output::Closed) | Ok(()) => Ok(()),
        Err(Output::Failed(e)) => Err(Failure::new(
            exit::HTTP,
            format!("cannot write to stdout: {e}"),
        )),
    }
}

/// Why printing the answer stopped.
enum Output {
    Client(quotagate::client::Error),
    /// stdout was closed (`| head`): not an error.
    Closed,
    Failed(std::io::Error),
}

impl From<quotagate::client::Error> for Output {
    fn from(e: quotagate::client::Error) -> Self {
        Output::Client(e)
    }
}

impl From<std::io::Error> for Output {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            Output::Closed
        } else {
            Output::Failed(e)
        }
    }
}

/// JSON for people on a terminal, one compact line for scripts.
fn write_json(
    out: &mut impl Write,
    value: &serde_json::Value,
    pretty: bool,
) -> std::io::Result<()> {
    if pretty {
        serde_json::to_writer_pretty(&mut *out, value)?;
    } else {
        serde_json::to_writer(&mut *out, value)?;
    }
    writeln!(out)
}

fn one(client: &Client, request: &Request) -> Result<(), Output> {
    let answer = client.send(request)?.error_for_status()?;
    let mut out = std::io::stdout().lock();
    let pretty = std::io::stdout().is_terminal();
    if answer.body().is_empty() {
        return Ok(());
    }
    match answer.json::<serde_json::Value>() {
        Ok(value) => write_json(&mut out, &value, pretty)?,
        Err(_) => {
            out.write_all(answer.body())?;
            if !answer.body().ends_with(b"\n") {
                writeln!(out)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn all_pages(client: &Client, request: &Request, array: bool) -> Result<(), Output> {
    let mut out = std::io::stdout().lock();
    let mut merged = Vec::new();
    for item in client.items(request) {
        let item = item?;
        if array {
            merged.push(item);
        } else {
            write_json(&mut out, &item, false)?;
        }
    }
    if array {
        let pretty = std::io::stdout().is_terminal();
        write_json(&mut out, &serde_json::Value::Array(merged), pretty)?;
    }
    out.flush()?;
    Ok(())
}
