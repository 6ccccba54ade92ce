//! IPv6 router advertisements (RFC 4861 section 6.2): what a router announces on its links
//! so that hosts find it as a default router and configure addresses from its prefixes
//! (RFC 4862), and when it announces it.
//!
//! Advertising is off unless configured ([`RaConfig`] in the tables: AdvSendAdvertisements
//! defaults to false, 6.2.1). When on, every port with an IPv6 prefix advertises:
//!
//! - unsolicited, to all-nodes, at random intervals between MinRtrAdvInterval and
//!   MaxRtrAdvInterval (6.2.4), the first straight away and the first
//!   [`MAX_INITIAL_RTR_ADVERTISEMENTS`] at most [`MAX_INITIAL_RTR_ADVERT_INTERVAL`] apart;
//! - in answer to a router solicitation, to all-nodes, after a random delay of at most
//!   [`MAX_RA_DELAY`] and never sooner than [`MIN_DELAY_BETWEEN_RAS`] after the previous
//!   multicast advertisement (6.2.6).
//!
//! The first worker keeps the unsolicited schedule; any worker answers the solicitations it
//! receives.

use crate::graph::Nanos;

const SECOND: Nanos = 1_000_000_000;

/// MAX_INITIAL_RTR_ADVERT_INTERVAL (RFC 4861 section 10).
pub const MAX_INITIAL_RTR_ADVERT_INTERVAL: Nanos = 16 * SECOND;
/// MAX_INITIAL_RTR_ADVERTISEMENTS.
pub const MAX_INITIAL_RTR_ADVERTISEMENTS: u8 = 3;
/// MIN_DELAY_BETWEEN_RAS: multicast advertisements are at least this far apart.
pub const MIN_DELAY_BETWEEN_RAS: Nanos = 3 * SECOND;
/// MAX_RA_DELAY_TIME: the most an answer to a solicitation waits.
pub const MAX_RA_DELAY: Nanos = SECOND / 2;

/// Valid lifetime of advertised prefixes: AdvValidLifetime's default, 30 days.
pub const PREFIX_VALID_LIFETIME: u32 = 2_592_000;
/// Preferred lifetime of advertised prefixes: AdvPreferredLifetime's default, 7 days.
pub const PREFIX_PREFERRED_LIFETIME: u32 = 604_800;

/// The router configuration variables of RFC 4861 section 6.2.1 that can be set; the others
/// keep their defaults (no managed or other-configuration flag, reachable time and
/// retransmission timer unspecified, prefixes on-link and, for /64s, autonomous).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaConfig {
    /// MaxRtrAdvInterval in seconds, 4 to 1800.
    pub max_interval: u16,
    /// MinRtrAdvInterval in seconds, 3 to three quarters of the maximum.
    pub min_interval: u16,
    /// AdvDefaultLifetime in seconds: 0 (not a default router) or the maximum interval to
    /// 9000.
    pub default_lifetime: u16,
    /// AdvCurHopLimit: the hop limit hosts should use (0: unspecified).
    pub cur_hop_limit: u8,
    /// Include an MTU option with the port's MTU (AdvLinkMTU; off by default, as in the RFC).
    pub link_mtu: bool,
}

impl Default for RaConfig {
    /// MaxRtrAdvInterval 600 s, MinRtrAdvInterval 198 s (0.33 × max), AdvDefaultLifetime
    /// 1800 s (3 × max), AdvCurHopLimit 64.
    fn default() -> Self {
        RaConfig {
            max_interval: 600,
            min_interval: 198,
            default_lifetime: 1800,
            cur_hop_limit: 64,
            link_mtu: false,
        }
    }
}

impl RaConfig {
    /// Advertisements at most `max_interval` seconds apart (MinRtrAdvInterval follows the
    /// RFC's default), announcing the router as a default router for `default_lifetime`
    /// seconds (default three intervals).
    pub fn new(max_interval: u16, default_lifetime: Option<u16>) -> Result<Self, String> {
        if !(4..=1800).contains(&max_interval) {
            return Err(format!(
                "router advertisement interval {max_interval} s is outside 4..=1800 (RFC 4861 6.2.1)"
            ));
        }
        // 0.33 × MaxRtrAdvInterval when that is at least 9 s, else the maximum itself.
        let min_interval = if max_interval >= 9 {
            (u32::from(max_interval) * 33 / 100) as u16
        } else {
            max_interval
        }
        .max(3);
        let default_lifetime = default_lifetime.unwrap_or(max_interval.saturating_mul(3).min(9000));
        if default_lifetime != 0 && !(max_interval..=9000).contains(&default_lifetime) {
            return Err(format!(
                "router lifetime {default_lifetime} s must be 0 or between the interval \
                 ({max_interval} s) and 9000 s (RFC 4861 6.2.1)"
            ));
        }
        Ok(RaConfig {
            max_interval,
            min_interval,
            default_lifetime,
            cur_hop_limit: 64,
            link_mtu: false,
        })
    }
}

/// When one port advertises next.
#[derive(Clone, Copy, Debug, Default)]
struct PortSchedule {
    /// The next advertisement, if one is due.
    next: Option<Nanos>,
    /// When the last multicast advertisement left.
    last_sent: Option<Nanos>,
    /// Unsolicited advertisements sent so far (the first few come sooner).
    sent: u8,
    /// The unsolicited schedule has been started (the first worker only).
    started: bool,
}

/// One worker's advertisement schedule, per port.
#[derive(Clone, Debug)]
pub struct Advertiser {
    ports: Vec<PortSchedule>,
    /// The tables version whose ports the schedule was last set up for.
    pub(crate) tables_version: Option<u64>,
    /// xorshift64 state, for the random intervals and delays.
    rng: u64,
}

impl Default for Advertiser {
    /// Seeded from the process's random hash keys: routers on one link do not fall into step.
    fn default() -> Self {
        use std::hash::BuildHasher;
        Advertiser {
            ports: Vec::new(),
            tables_version: None,
            rng: std::collections::hash_map::RandomState::new().hash_one(0u64) | 1,
        }
    }
}

impl Advertiser {
    /// A random duration in `0..=max`.
    fn random_up_to(&mut self, max: Nanos) -> Nanos {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        if max == 0 {
            0
        } else {
            x % (max + 1)
        }
    }

    fn port(&mut self, port: u16) -> &mut PortSchedule {
        let i = usize::from(port);
        if self.ports.len() <= i {
            self.ports.resize(i + 1, PortSchedule::default());
        }
        &mut self.ports[i]
    }

    /// Starts the unsolicited schedule of `port` (advertising now) unless it runs already.
    pub fn start(&mut self, port: u16, now: Nanos) {
        let p = self.port(port);
        if !p.started {
            p.started = true;
            p.next = Some(now);
        }
    }

    /// A router solicitation arrived on `port` at `now` (RFC 4861 6.2.6): the answer goes
    /// out after a random delay of at most [`MAX_RA_DELAY`], and no sooner than
    /// [`MIN_DELAY_BETWEEN_RAS`] after the last multicast advertisement; an advertisement
    /// already due sooner answers it instead.
    pub fn solicited(&mut self, port: u16, now: Nanos) {
        let delay = self.random_up_to(MAX_RA_DELAY);
        let p = self.port(port);
        let mut at = now + delay;
        if let Some(last) = p.last_sent {
            if now < last + MIN_DELAY_BETWEEN_RAS {
                at = last + MIN_DELAY_BETWEEN_RAS + delay;
            }
        }
        p.next = Some(p.next.map_or(at, |next| next.min(at)));
    }

    /// The ports whose advertisement is due at `now`, in port order.
    pub fn due(&self, now: Nanos) -> impl Iterator<Item = u16> + '_ {
        self.ports
            .iter()
            .enumerate()
            .filter(move |(_, p)| p.next.is_some_and(|at| at <= now))
            .map(|(i, _)| i as u16)
    }

    /// An advertisement left `port` at `now`: the next unsolicited one is a random
    /// MinRtrAdvInterval..=MaxRtrAdvInterval away (at most
    /// [`MAX_INITIAL_RTR_ADVERT_INTERVAL`] for the first few), if this worker keeps the
    /// port's schedule.
    pub fn sent(&mut self, port: u16, now: Nanos, config: &RaConfig) {
        let min = Nanos::from(config.min_interval) * SECOND;
        let max = Nanos::from(config.max_interval) * SECOND;
        let mut interval = min + self.random_up_to(max - min);
        let p = self.port(port);
        p.last_sent = Some(now);
        if !p.started {
            p.next = None;
            return;
        }
        if p.sent < MAX_INITIAL_RTR_ADVERTISEMENTS {
            p.sent += 1;
            interval = interval.min(MAX_INITIAL_RTR_ADVERT_INTERVAL);
        }
        p.next = Some(now + interval);
    }

    /// Forgets the schedule of `port` (it stopped advertising).
    pub fn stop(&mut self, port: u16) {
        *self.port(port) = PortSchedule::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_rfc_4861() {
        let c = RaConfig::default();
        assert_eq!(
            (c.max_interval, c.min_interval, c.default_lifetime),
            (600, 198, 1800)
        );
        assert_eq!(RaConfig::new(4, None).unwrap().min_interval, 4);
        assert!(RaConfig::new(3, None).is_err());
        assert!(RaConfig::new(1801, None).is_err());
        assert!(RaConfig::new(30, Some(10)).is_err());
        assert_eq!(RaConfig::new(30, Some(0)).unwrap().default_lifetime, 0);
        assert!(RaConfig::new(30, Some(9001)).is_err());
    }

    #[test]
    fn unsolicited_first_few_come_sooner() {
        let config = RaConfig::default();
        let mut a = Advertiser::default();
        a.start(0, 0);
        let mut now = 0;
        let mut times = Vec::new();
        for _ in 0..6 {
            assert_eq!(a.due(now).collect::<Vec<_>>(), vec![0]);
            a.sent(0, now, &config);
            times.push(now);
            let next = a.ports[0].next.unwrap();
            assert!(a.due(next - 1).next().is_none());
            now = next;
        }
        let gaps: Vec<Nanos> = times.windows(2).map(|w| (w[1] - w[0]) / SECOND).collect();
        assert!(gaps[..3].iter().all(|&g| g <= 16), "{gaps:?}");
        assert!(
            gaps[3..].iter().all(|&g| (198..=600).contains(&g)),
            "{gaps:?}"
        );
    }

    #[test]
    fn solicited_answers_wait_and_respect_the_spacing() {
        let config = RaConfig::default();
        let mut a = Advertiser::default();
        a.solicited(1, 10 * SECOND);
        let at = a.ports[1].next.unwrap();
        assert!((10 * SECOND..=10 * SECOND + MAX_RA_DELAY).contains(&at));
        a.sent(1, at, &config);
        // Not the schedule keeper: nothing more until asked.
        assert!(a.ports[1].next.is_none());
        a.solicited(1, at + SECOND);
        let again = a.ports[1].next.unwrap();
        assert!(again >= at + MIN_DELAY_BETWEEN_RAS, "{again} vs {at}");
        assert!(again <= at + MIN_DELAY_BETWEEN_RAS + MAX_RA_DELAY);
    }
}
