//! The latency model: how long Graph takes to answer, per route class, so benchmarks can
//! show what a client does against real round trips instead of loopback's microseconds.
//!
//! A model is a list of `class=MEAN[±JITTER]` parts, e.g.
//! `em=250ms±100ms,directory=80ms±40ms,token=150ms` (`+-` may stand for `±`). Each request
//! of a class waits a delay drawn uniformly from `[MEAN-JITTER, MEAN+JITTER]` (never below
//! zero) before it is handled. Classes without a part answer at once.
//!
//! Delays are deterministic: the n-th request the simulator receives (counted from start
//! or reset) draws from a ChaCha RNG seeded with the scenario seed and n, so the same run
//! order gives the same delays. Concurrent clients may arrive in a different order from
//! run to run; the delays they see are then the same set, not necessarily the same
//! request for request.
//!
//! Inside `$batch`, Graph runs the inner requests concurrently (unless `dependsOn` chains
//! them), so a batch costs about its slowest inner request: each inner request draws its
//! own delay, a chain's delays add up, and the batch waits for the longest chain plus the
//! `batch` class's own overhead, if one is set.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Which latency class a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteClass {
    /// Entitlement management: `/identityGovernance/...`.
    Em,
    /// Directory: `/groups`, `/users`, `/servicePrincipals`, `/directoryObjects` (delta
    /// included).
    Directory,
    /// The token endpoint.
    Token,
    /// The outer `$batch` request's own overhead (its items draw their own delays).
    Batch,
}

impl RouteClass {
    const ALL: [RouteClass; 4] = [
        RouteClass::Em,
        RouteClass::Directory,
        RouteClass::Token,
        RouteClass::Batch,
    ];

    /// The name used in a model's text.
    pub fn name(self) -> &'static str {
        match self {
            RouteClass::Em => "em",
            RouteClass::Directory => "directory",
            RouteClass::Token => "token",
            RouteClass::Batch => "batch",
        }
    }

    /// The class of a `/v1.0/...` path; `None` for paths no class covers.
    pub fn of_graph_path(path: &str) -> Option<RouteClass> {
        let rest = path.strip_prefix("/v1.0/")?;
        let first = rest.split('/').next().unwrap_or_default();
        let first = first.split('?').next().unwrap_or_default();
        match first.to_ascii_lowercase().as_str() {
            "identitygovernance" => Some(RouteClass::Em),
            "groups" | "users" | "directoryobjects" | "rolemanagement" | "identityprotection" => {
                Some(RouteClass::Directory)
            }
            sp if sp.starts_with("serviceprincipals") => Some(RouteClass::Directory),
            "$batch" => Some(RouteClass::Batch),
            _ => None,
        }
    }

    fn index(self) -> usize {
        match self {
            RouteClass::Em => 0,
            RouteClass::Directory => 1,
            RouteClass::Token => 2,
            RouteClass::Batch => 3,
        }
    }
}

/// One class's delay: uniform in `[mean - jitter, mean + jitter]`, at least zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyDist {
    /// The middle of the range.
    pub mean: Duration,
    /// Half the range's width.
    pub jitter: Duration,
}

impl LatencyDist {
    /// A fixed delay.
    pub fn fixed(mean: Duration) -> Self {
        Self {
            mean,
            jitter: Duration::ZERO,
        }
    }

    fn sample(&self, rng: &mut impl Rng) -> Duration {
        if self.jitter.is_zero() {
            return self.mean;
        }
        let lo = self.mean.saturating_sub(self.jitter);
        let hi = self.mean + self.jitter;
        let micros = rng.random_range(lo.as_micros()..=hi.as_micros());
        Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
    }
}

impl fmt::Display for LatencyDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", fmt_ms(self.mean))?;
        if !self.jitter.is_zero() {
            write!(f, "±{}", fmt_ms(self.jitter))?;
        }
        Ok(())
    }
}

fn fmt_ms(d: Duration) -> String {
    let us = d.as_micros();
    if us.is_multiple_of(1000) {
        format!("{}ms", us / 1000)
    } else {
        format!("{us}us")
    }
}

/// Why a latency model's text does not parse; says which part is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LatencyParseError {
    /// The model has no parts at all.
    #[error("the latency model is empty; expected e.g. em=250ms±100ms,directory=80ms±40ms")]
    Empty,
    /// A part is not `class=duration`.
    #[error("latency part {part:?}: expected CLASS=DURATION[±JITTER], e.g. em=250ms±100ms")]
    Shape {
        /// The part as written.
        part: String,
    },
    /// A part names a class that does not exist.
    #[error(
        "latency part {part:?}: unknown class {class:?}; the classes are em, directory, token, batch"
    )]
    UnknownClass {
        /// The part as written.
        part: String,
        /// The class as written.
        class: String,
    },
    /// A class appears twice.
    #[error("latency part {part:?}: class {class:?} is given twice")]
    Duplicate {
        /// The part as written.
        part: String,
        /// The class.
        class: String,
    },
    /// A duration does not parse.
    #[error("latency part {part:?}: {value:?} is not a duration like 250ms or 1s")]
    Duration {
        /// The part as written.
        part: String,
        /// The duration as written.
        value: String,
    },
}

/// Delays per route class (see the module documentation). The default has none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencyModel {
    classes: [Option<LatencyDist>; 4],
}

impl LatencyModel {
    /// The model the benchmarks use for the real Graph: `em=250ms±100ms`,
    /// `directory=80ms±40ms`, `token=150ms` (see docs/benchmarks.md for where the figures
    /// come from).
    pub fn graph_estimate() -> Self {
        let ms = Duration::from_millis;
        Self::default()
            .with(
                RouteClass::Em,
                LatencyDist {
                    mean: ms(250),
                    jitter: ms(100),
                },
            )
            .with(
                RouteClass::Directory,
                LatencyDist {
                    mean: ms(80),
                    jitter: ms(40),
                },
            )
            .with(RouteClass::Token, LatencyDist::fixed(ms(150)))
    }

    /// This model with `class` set to `dist`.
    pub fn with(mut self, class: RouteClass, dist: LatencyDist) -> Self {
        self.classes[class.index()] = Some(dist);
        self
    }

    /// The delay of `class`, if set.
    pub fn get(&self, class: RouteClass) -> Option<LatencyDist> {
        self.classes[class.index()]
    }

    /// True when no class has a delay.
    pub fn is_off(&self) -> bool {
        self.classes.iter().all(Option::is_none)
    }

    /// The delay of the `n`-th request under `seed`, for a request of `class`. Pure: the
    /// same inputs give the same delay.
    pub fn delay(&self, class: RouteClass, seed: u64, n: u64) -> Duration {
        let Some(dist) = self.get(class) else {
            return Duration::ZERO;
        };
        // Spread consecutive counters over the seed space; ChaCha does the rest.
        let mut rng =
            ChaCha8Rng::seed_from_u64(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x01a7_e0c7);
        dist.sample(&mut rng)
    }
}

impl FromStr for LatencyModel {
    type Err = LatencyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut model = LatencyModel::default();
        let parts: Vec<&str> = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        if parts.is_empty() {
            return Err(LatencyParseError::Empty);
        }
        for part in parts {
            let owned = || part.to_string();
            let (class, value) = part
                .split_once('=')
                .ok_or_else(|| LatencyParseError::Shape { part: owned() })?;
            let class_name = class.trim().to_ascii_lowercase();
            let class = RouteClass::ALL
                .into_iter()
                .find(|c| c.name() == class_name)
                .ok_or_else(|| LatencyParseError::UnknownClass {
                    part: owned(),
                    class: class.trim().to_string(),
                })?;
            if model.get(class).is_some() {
                return Err(LatencyParseError::Duplicate {
                    part: owned(),
                    class: class_name,
                });
            }
            let (mean, jitter) = match value.split_once('±').or_else(|| value.split_once("+-")) {
                Some((m, j)) => (m, Some(j)),
                None => (value, None),
            };
            let duration = |v: &str| {
                parse_duration(v).ok_or_else(|| LatencyParseError::Duration {
                    part: owned(),
                    value: v.trim().to_string(),
                })
            };
            let dist = LatencyDist {
                mean: duration(mean)?,
                jitter: jitter.map(duration).transpose()?.unwrap_or_default(),
            };
            model = model.with(class, dist);
        }
        Ok(model)
    }
}

impl fmt::Display for LatencyModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = RouteClass::ALL
            .into_iter()
            .filter_map(|c| self.get(c).map(|d| format!("{}={d}", c.name())))
            .collect();
        if parts.is_empty() {
            f.write_str("off")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

/// A non-negative fixed duration (`250ms`, `1.5s`, `1s`); `None` otherwise.
fn parse_duration(s: &str) -> Option<Duration> {
    let d = super::scenario::parse_duration(s).ok()?;
    Duration::try_from(d).ok()
}

/// The admin API's body (`PUT /_sim/latency`): `{"model": "em=250ms±100ms,..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LatencyBody {
    pub model: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn parses_every_class_with_and_without_jitter() {
        let m: LatencyModel = "em=250ms±100ms, directory=80ms+-40ms,token=150ms,batch=5ms"
            .parse()
            .unwrap();
        assert_eq!(
            m.get(RouteClass::Em),
            Some(LatencyDist {
                mean: MS(250),
                jitter: MS(100)
            })
        );
        assert_eq!(
            m.get(RouteClass::Directory),
            Some(LatencyDist {
                mean: MS(80),
                jitter: MS(40)
            })
        );
        assert_eq!(m.get(RouteClass::Token), Some(LatencyDist::fixed(MS(150))));
        assert_eq!(m.get(RouteClass::Batch), Some(LatencyDist::fixed(MS(5))));
        assert_eq!(
            m,
            LatencyModel::graph_estimate().with(RouteClass::Batch, LatencyDist::fixed(MS(5)))
        );
        // Display round-trips.
        assert_eq!(m.to_string().parse::<LatencyModel>().unwrap(), m);
        assert_eq!(LatencyModel::default().to_string(), "off");
    }

    #[test]
    fn parse_errors_name_the_bad_part() {
        let err = |s: &str| s.parse::<LatencyModel>().unwrap_err().to_string();
        assert!(err("").contains("empty"));
        let e = err("em=250ms,dir=80ms");
        assert!(
            e.contains("\"dir=80ms\"") && e.contains("unknown class"),
            "{e}"
        );
        let e = err("em=250ms,directory");
        assert!(
            e.contains("\"directory\"") && e.contains("CLASS=DURATION"),
            "{e}"
        );
        let e = err("em=250ms±fast");
        assert!(
            e.contains("\"em=250ms±fast\"") && e.contains("\"fast\""),
            "{e}"
        );
        let e = err("em=-5ms");
        assert!(e.contains("\"-5ms\""), "{e}");
        let e = err("em=1ms,EM=2ms");
        assert!(e.contains("given twice"), "{e}");
    }

    #[test]
    fn delays_are_deterministic_per_seed_and_counter_and_stay_in_range() {
        let m = LatencyModel::graph_estimate();
        let run = |seed| -> Vec<Duration> {
            (0..200).map(|n| m.delay(RouteClass::Em, seed, n)).collect()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let delays = run(7);
        assert!(delays.iter().all(|d| *d >= MS(150) && *d <= MS(350)));
        // Not a constant: the jitter is used.
        assert!(delays.iter().any(|d| *d != delays[0]));
        // A fixed class is fixed; an unset class is zero.
        assert_eq!(m.delay(RouteClass::Token, 7, 3), MS(150));
        assert_eq!(m.delay(RouteClass::Batch, 7, 3), Duration::ZERO);
    }

    #[test]
    fn jitter_larger_than_the_mean_never_goes_negative() {
        let m: LatencyModel = "directory=10ms±50ms".parse().unwrap();
        assert!((0..100).all(|n| m.delay(RouteClass::Directory, 1, n) <= MS(60)));
    }

    #[test]
    fn classes_follow_the_path() {
        let c = RouteClass::of_graph_path;
        assert_eq!(
            c("/v1.0/identityGovernance/entitlementManagement/assignments"),
            Some(RouteClass::Em)
        );
        assert_eq!(c("/v1.0/groups/x/members"), Some(RouteClass::Directory));
        assert_eq!(c("/v1.0/groups/delta"), Some(RouteClass::Directory));
        assert_eq!(
            c("/v1.0/servicePrincipals(appId='x')"),
            Some(RouteClass::Directory)
        );
        assert_eq!(c("/v1.0/users/x"), Some(RouteClass::Directory));
        assert_eq!(c("/v1.0/$batch"), Some(RouteClass::Batch));
        assert_eq!(c("/v1.0/organization"), None);
        assert_eq!(c("/beta/groups"), None);
    }
}
