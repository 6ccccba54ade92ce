//! Router advertisements: what a router announces on its links so that hosts find it as a
//! default router, and when it announces it. IPv6 (RFC 4861 section 6.2, hosts also configure
//! addresses from the advertised prefixes, RFC 4862) and IPv4's ICMP router discovery
//! (RFC 1256, which RFC 1812 4.3.3.10 asks routers to support).
//!
//! Advertising is off unless configured ([`RaConfig`] and [`IrdpConfig`] in the tables:
//! AdvSendAdvertisements defaults to false, RFC 4861 6.2.1; for IPv4 we follow what routers
//! and Linux do rather than RFC 1256's default). When on, every port with an address of the
//! family advertises:
//!
//! - unsolicited, to all-nodes (IPv4: 224.0.0.1, or the limited broadcast), at random
//!   intervals between the minimum and maximum advertisement intervals (RFC 4861 6.2.4,
//!   RFC 1256 4.3), the first straight away and the first [`MAX_INITIAL_RTR_ADVERTISEMENTS`]
//!   at most [`MAX_INITIAL_RTR_ADVERT_INTERVAL`] apart (the same in both RFCs);
//! - in answer to a router solicitation, to the same group, after a random delay of at most
//!   [`MAX_RA_DELAY`] (IPv4: [`MAX_RESPONSE_DELAY`]), and for IPv6 never sooner than
//!   [`MIN_DELAY_BETWEEN_RAS`] after the previous multicast advertisement (6.2.6).
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
/// RFC 1256's MAX_RESPONSE_DELAY: the most an IPv4 answer to a solicitation waits.
pub const MAX_RESPONSE_DELAY: Nanos = 2 * SECOND;

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

    /// MinRtrAdvInterval and MaxRtrAdvInterval, for [`Advertiser::sent`].
    pub fn intervals(&self) -> (u16, u16) {
        (self.min_interval, self.max_interval)
    }
}

/// The router configuration variables of RFC 1256 section 4.1, for every port with an IPv4
/// address: each of its addresses is advertised, with one preference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IrdpConfig {
    /// MaxAdvertisementInterval in seconds, 4 to 1800.
    pub max_interval: u16,
    /// MinAdvertisementInterval in seconds: three quarters of the maximum (at least 3).
    pub min_interval: u16,
    /// AdvertisementLifetime in seconds: the maximum interval to 9000.
    pub lifetime: u16,
    /// PreferenceLevel of the advertised addresses (higher is preferred; `i32::MIN`: never a
    /// default router).
    pub preference: i32,
    /// AdvertisementAddress: the limited broadcast instead of all-systems (224.0.0.1), for
    /// links whose hosts do not listen to multicast.
    pub broadcast: bool,
}

impl Default for IrdpConfig {
    /// MaxAdvertisementInterval 600 s, MinAdvertisementInterval 450 s, AdvertisementLifetime
    /// 1800 s, PreferenceLevel 0, to 224.0.0.1: RFC 1256's defaults.
    fn default() -> Self {
        IrdpConfig {
            max_interval: 600,
            min_interval: 450,
            lifetime: 1800,
            preference: 0,
            broadcast: false,
        }
    }
}

impl IrdpConfig {
    /// Advertisements at most `max_interval` seconds apart (MinAdvertisementInterval follows
    /// the RFC's default), valid for `lifetime` seconds (default three intervals).
    pub fn new(max_interval: u16, lifetime: Option<u16>) -> Result<Self, String> {
        if !(4..=1800).contains(&max_interval) {
            return Err(format!(
                "router discovery interval {max_interval} s is outside 4..=1800 (RFC 1256 4.1)"
            ));
        }
        let min_interval = ((u32::from(max_interval) * 3 / 4) as u16).max(3);
        let lifetime = lifetime.unwrap_or(max_interval.saturating_mul(3).min(9000));
        if !(max_interval..=9000).contains(&lifetime) {
            return Err(format!(
                "router discovery lifetime {lifetime} s must be between the interval \
                 ({max_interval} s) and 9000 s (RFC 1256 4.1)"
            ));
        }
        Ok(IrdpConfig {
            max_interval,
            min_interval,
            lifetime,
            ..IrdpConfig::default()
        })
    }

    /// MinAdvertisementInterval and MaxAdvertisementInterval, for [`Advertiser::sent`].
    pub fn intervals(&self) -> (u16, u16) {
        (self.min_interval, self.max_interval)
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

/// One worker's advertisement schedule, per port, for one family.
#[derive(Clone, Debug)]
pub struct Advertiser {
    ports: Vec<PortSchedule>,
    /// The most an answer to a solicitation waits.
    response_delay: Nanos,
    /// The least time between two multicast advertisements answering solicitations.
    min_spacing: Nanos,
    /// The tables version whose ports the schedule was last set up for.
    pub(crate) tables_version: Option<u64>,
    /// For the random intervals and delays.
    rng: Jitter,
}

/// A xorshift64 generator for the random delays of link protocols (advertisements, listener
/// reports), seeded from the process's random hash keys so that routers on one link do not
/// fall into step.
#[derive(Clone, Debug)]
pub(crate) struct Jitter(u64);

impl Default for Jitter {
    fn default() -> Self {
        use std::hash::BuildHasher;
        Jitter(std::collections::hash_map::RandomState::new().hash_one(0u64) | 1)
    }
}

impl Jitter {
    /// A random duration in `0..=max`.
    pub(crate) fn up_to(&mut self, max: Nanos) -> Nanos {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        if max == 0 {
            0
        } else {
            x % (max + 1)
        }
    }
}

impl Default for Advertiser {
    /// IPv6's (RFC 4861 6.2.6) schedule.
    fn default() -> Self {
        Advertiser::with_timing(MAX_RA_DELAY, MIN_DELAY_BETWEEN_RAS)
    }
}

impl Advertiser {
    /// IPv4's (RFC 1256 4.3) schedule.
    pub fn ipv4() -> Self {
        Advertiser::with_timing(MAX_RESPONSE_DELAY, 0)
    }

    fn with_timing(response_delay: Nanos, min_spacing: Nanos) -> Self {
        Advertiser {
            ports: Vec::new(),
            response_delay,
            min_spacing,
            tables_version: None,
            rng: Jitter::default(),
        }
    }

    /// A random duration in `0..=max`.
    fn random_up_to(&mut self, max: Nanos) -> Nanos {
        self.rng.up_to(max)
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

    /// A router solicitation arrived on `port` at `now` (RFC 4861 6.2.6, RFC 1256 4.3): the
    /// answer goes out after a random delay of at most [`MAX_RA_DELAY`] (IPv4:
    /// [`MAX_RESPONSE_DELAY`]), and for IPv6 no sooner than [`MIN_DELAY_BETWEEN_RAS`] after
    /// the last multicast advertisement; an advertisement already due sooner answers it
    /// instead.
    pub fn solicited(&mut self, port: u16, now: Nanos) {
        let delay = self.random_up_to(self.response_delay);
        let spacing = self.min_spacing;
        let p = self.port(port);
        let mut at = now + delay;
        if let Some(last) = p.last_sent {
            if now < last + spacing {
                at = last + spacing + delay;
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
    /// `min_interval..=max_interval` seconds away (at most [`MAX_INITIAL_RTR_ADVERT_INTERVAL`]
    /// for the first few), if this worker keeps the port's schedule.
    pub fn sent(&mut self, port: u16, now: Nanos, (min_interval, max_interval): (u16, u16)) {
        let min = Nanos::from(min_interval) * SECOND;
        let max = Nanos::from(max_interval).max(Nanos::from(min_interval)) * SECOND;
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
    fn irdp_defaults_follow_rfc_1256() {
        let c = IrdpConfig::default();
        assert_eq!(
            (c.max_interval, c.min_interval, c.lifetime),
            (600, 450, 1800)
        );
        assert_eq!(IrdpConfig::new(600, None).unwrap(), c);
        assert_eq!(IrdpConfig::new(4, None).unwrap().min_interval, 3);
        assert!(IrdpConfig::new(3, None).is_err());
        assert!(IrdpConfig::new(1801, None).is_err());
        assert!(IrdpConfig::new(30, Some(29)).is_err());
        assert!(IrdpConfig::new(30, Some(9001)).is_err());
        assert_eq!(IrdpConfig::new(3000 / 3, None).unwrap().lifetime, 3000);
    }

    #[test]
    fn irdp_answers_wait_at_most_two_seconds_without_spacing() {
        let config = IrdpConfig::default();
        let mut a = Advertiser::ipv4();
        for i in 0..20 {
            let now = i * 10 * SECOND;
            a.solicited(0, now);
            let at = a.ports[0].next.unwrap();
            assert!((now..=now + MAX_RESPONSE_DELAY).contains(&at), "{at}");
            a.sent(0, at, config.intervals());
            // Asked again at once: answered within two seconds all the same.
            a.solicited(0, at);
            assert!(a.ports[0].next.unwrap() <= at + MAX_RESPONSE_DELAY);
            a.sent(0, at, config.intervals());
        }
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
            a.sent(0, now, config.intervals());
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
        a.sent(1, at, config.intervals());
        // Not the schedule keeper: nothing more until asked.
        assert!(a.ports[1].next.is_none());
        a.solicited(1, at + SECOND);
        let again = a.ports[1].next.unwrap();
        assert!(again >= at + MIN_DELAY_BETWEEN_RAS, "{again} vs {at}");
        assert!(again <= at + MIN_DELAY_BETWEEN_RAS + MAX_RA_DELAY);
    }
}
