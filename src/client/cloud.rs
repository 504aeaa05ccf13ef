//! The Microsoft clouds and regions the Defender APIs live in: which login authority, API
//! host and token audience each uses.

use super::error::Error;

/// A cloud (or commercial region) of the Defender for Endpoint API. It sets the login
/// authority, the API base URL and the token scope together; an explicit
/// [`ClientBuilder::base_url`](super::ClientBuilder::base_url),
/// [`authority`](super::ClientBuilder::authority), [`scope`](super::ClientBuilder::scope)
/// or [`resource`](super::ClientBuilder::resource) still overrides its part.
///
/// The commercial regional hosts (`us.`, `eu.`, ...) serve the same API as the global
/// host from a region's data centres; their tokens are issued for the MDE application,
/// `https://api.securitycenter.microsoft.com`, like the global host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cloud {
    /// Commercial, global host `https://api.securitycenter.microsoft.com` (the default).
    Commercial,
    /// Commercial, United States: `https://us.api.security.microsoft.com`.
    Us,
    /// Commercial, Europe: `https://eu.api.security.microsoft.com`.
    Eu,
    /// Commercial, United Kingdom: `https://uk.api.security.microsoft.com`.
    Uk,
    /// Commercial, Australia: `https://au.api.security.microsoft.com`.
    Au,
    /// Commercial, Switzerland: `https://swa.api.security.microsoft.com`.
    Swa,
    /// Commercial, India: `https://ina.api.security.microsoft.com`.
    Ina,
    /// Commercial, United Arab Emirates: `https://aea.api.security.microsoft.com`.
    Aea,
    /// US Government Community Cloud: `https://api-gcc.securitycenter.microsoft.us`, with
    /// the commercial login `https://login.microsoftonline.com`.
    Gcc,
    /// US Government GCC High: `https://api-gov.securitycenter.microsoft.us`, with the
    /// government login `https://login.microsoftonline.us`.
    GccHigh,
    /// US Department of Defense. Microsoft's MDE API pages list the same hosts for GCC High
    /// and DoD (`https://api-gov.securitycenter.microsoft.us`, login
    /// `https://login.microsoftonline.us`), so this preset equals [`Cloud::GccHigh`]. Other
    /// Microsoft services use hosts of their own for DoD; if the API moves there, set
    /// `base_url` and `scope` explicitly.
    Dod,
}

const COMMERCIAL_LOGIN: &str = "https://login.microsoftonline.com";
const GOV_LOGIN: &str = "https://login.microsoftonline.us";
const MDE_APP: &str = "https://api.securitycenter.microsoft.com";

impl Cloud {
    /// Every preset, in the order of [`Cloud::NAMES`].
    pub const ALL: [Cloud; 11] = [
        Cloud::Commercial,
        Cloud::Us,
        Cloud::Eu,
        Cloud::Uk,
        Cloud::Au,
        Cloud::Swa,
        Cloud::Ina,
        Cloud::Aea,
        Cloud::Gcc,
        Cloud::GccHigh,
        Cloud::Dod,
    ];

    /// The names [`Cloud::from_name`] accepts.
    pub const NAMES: [&'static str; 11] = [
        "commercial",
        "us",
        "eu",
        "uk",
        "au",
        "swa",
        "ina",
        "aea",
        "gcc",
        "gcc-high",
        "dod",
    ];

    /// The preset of `name` (case-insensitive; `gcc_high` and `gcchigh` also work). An
    /// unknown name is an [`Error::InvalidArgument`] that lists the valid ones.
    pub fn from_name(name: &str) -> Result<Cloud, Error> {
        let n = name.trim().to_ascii_lowercase().replace('_', "-");
        let n = if n == "gcchigh" { "gcc-high".into() } else { n };
        Self::NAMES
            .iter()
            .position(|&x| x == n)
            .map(|i| Self::ALL[i])
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown cloud {name:?}: use one of {}",
                    Self::NAMES.join(", ")
                ))
            })
    }

    /// The preset's name, as [`Cloud::from_name`] takes it.
    pub fn name(self) -> &'static str {
        Self::NAMES[Self::ALL.iter().position(|&c| c == self).unwrap_or(0)]
    }

    /// The login authority.
    pub fn authority(self) -> &'static str {
        match self {
            Cloud::GccHigh | Cloud::Dod => GOV_LOGIN,
            _ => COMMERCIAL_LOGIN,
        }
    }

    /// The API's base URL.
    pub fn base_url(self) -> &'static str {
        match self {
            Cloud::Commercial => MDE_APP,
            Cloud::Us => "https://us.api.security.microsoft.com",
            Cloud::Eu => "https://eu.api.security.microsoft.com",
            Cloud::Uk => "https://uk.api.security.microsoft.com",
            Cloud::Au => "https://au.api.security.microsoft.com",
            Cloud::Swa => "https://swa.api.security.microsoft.com",
            Cloud::Ina => "https://ina.api.security.microsoft.com",
            Cloud::Aea => "https://aea.api.security.microsoft.com",
            Cloud::Gcc => "https://api-gcc.securitycenter.microsoft.us",
            Cloud::GccHigh | Cloud::Dod => "https://api-gov.securitycenter.microsoft.us",
        }
    }

    /// The token audience (the application ID URI): the v2 scope is this plus
    /// `/.default`, the v1 resource is this.
    pub fn audience(self) -> &'static str {
        match self {
            Cloud::Gcc | Cloud::GccHigh | Cloud::Dod => self.base_url(),
            _ => MDE_APP,
        }
    }

    /// The v2 token scope: [`Cloud::audience`] + `/.default`.
    pub fn scope(self) -> String {
        format!("{}/.default", self.audience())
    }
}

impl std::str::FromStr for Cloud {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Cloud::from_name(s)
    }
}

impl std::fmt::Display for Cloud {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_valid_ones() {
        for c in Cloud::ALL {
            assert_eq!(Cloud::from_name(c.name()).unwrap(), c);
        }
        assert_eq!(Cloud::from_name("GCC_High").unwrap(), Cloud::GccHigh);
        let e = Cloud::from_name("mars").unwrap_err().to_string();
        assert!(e.contains("commercial") && e.contains("gcc-high") && e.contains("dod"));
    }

    #[test]
    fn hosts_follow_the_published_table() {
        assert_eq!(
            Cloud::Eu.base_url(),
            "https://eu.api.security.microsoft.com"
        );
        assert_eq!(
            Cloud::Eu.scope(),
            "https://api.securitycenter.microsoft.com/.default"
        );
        assert_eq!(Cloud::Gcc.authority(), "https://login.microsoftonline.com");
        assert_eq!(
            Cloud::Gcc.scope(),
            "https://api-gcc.securitycenter.microsoft.us/.default"
        );
        assert_eq!(
            Cloud::GccHigh.authority(),
            "https://login.microsoftonline.us"
        );
        assert_eq!(Cloud::Dod.base_url(), Cloud::GccHigh.base_url());
    }
}
