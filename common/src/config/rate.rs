//! Rate limits as operators write them: "200/minute", "10 per second".

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// `count` requests per `period`: "200/minute", "10 per second", "5 hours", "1000/day".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    pub count: u32,
    pub period: Duration,
}

impl RateLimit {
    pub fn per(count: u32, seconds: u64) -> Self {
        Self { count, period: Duration::from_secs(seconds) }
    }
}

impl FromStr for RateLimit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a rate limit like \"200/minute\" or \"10 per second\"");
        let lower = s.trim().to_ascii_lowercase();
        let digits = lower.chars().take_while(char::is_ascii_digit).count();
        let count: u32 = lower[..digits].parse().map_err(|_| bad())?;
        let rest = lower[digits..].trim();
        let rest = rest.strip_prefix('/').or_else(|| rest.strip_prefix("per ")).unwrap_or(rest).trim();
        let unit = rest.strip_suffix('s').filter(|u| !u.is_empty()).unwrap_or(rest);
        let seconds = match unit {
            "second" | "sec" | "s" => 1,
            "minute" | "min" | "m" => 60,
            "hour" | "h" => 3600,
            "day" | "d" => 86_400,
            _ => return Err(bad()),
        };
        if count == 0 || count > 1_000_000 {
            return Err(format!("{s:?}: the count must be between 1 and 1000000"));
        }
        Ok(Self::per(count, seconds))
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "second",
            60 => "minute",
            3600 => "hour",
            86_400 => "day",
            other => return write!(f, "{}/{other}s", self.count),
        };
        write!(f, "{}/{unit}", self.count)
    }
}
