//! Transmission parameters (RFC 7252 §4.8) and the times derived from them (§4.8.2).
//!
//! Defaults are the RFC's. They can be set per request (every [`super::Endpoint`] call
//! takes a `&TransmissionParams`), so a slow radio link can get a longer ACK_TIMEOUT than a
//! wired server. The derived times assume the RFC's worst cases, as the RFC does.

use std::time::Duration;

/// Max-Age when a response carries none (RFC 7252 §5.10.5).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60);

/// The message layer's timing and the request layer's patience.
#[derive(Debug, Clone, PartialEq)]
pub struct TransmissionParams {
    /// ACK_TIMEOUT: the base timeout for an acknowledgement (2 s).
    pub ack_timeout: Duration,
    /// ACK_RANDOM_FACTOR: the first timeout is random in
    /// [ACK_TIMEOUT, ACK_TIMEOUT × ACK_RANDOM_FACTOR] (1.5; must be ≥ 1).
    pub ack_random_factor: f64,
    /// MAX_RETRANSMIT: retransmissions of a confirmable message before giving up (4).
    pub max_retransmit: u32,
    /// NSTART: outstanding interactions per server (1). A request waits in the server's
    /// queue until fewer are outstanding. The queue of a server is created with the NSTART
    /// of the first request to it and keeps it while it is in use.
    pub nstart: usize,
    /// MAX_LATENCY: the longest a datagram is expected to take (100 s); feeds
    /// EXCHANGE_LIFETIME and NON_LIFETIME (duplicate detection).
    pub max_latency: Duration,
    /// PROCESSING_DELAY: how long a server may take to turn a CON into an ACK
    /// (ACK_TIMEOUT, 2 s).
    pub processing_delay: Duration,
    /// How long to wait for a response that is not piggybacked: after an empty ACK (a
    /// separate response), or to a NON request. Not an RFC constant; 60 s.
    pub response_timeout: Duration,
}

impl Default for TransmissionParams {
    fn default() -> Self {
        TransmissionParams {
            ack_timeout: Duration::from_secs(2),
            ack_random_factor: 1.5,
            max_retransmit: 4,
            nstart: 1,
            max_latency: Duration::from_secs(100),
            processing_delay: Duration::from_secs(2),
            response_timeout: Duration::from_secs(60),
        }
    }
}

impl TransmissionParams {
    /// Checks the values that would break the arithmetic or the protocol.
    pub fn validate(&self) -> Result<(), String> {
        if self.ack_timeout.is_zero() {
            return Err("ack_timeout must be greater than zero".into());
        }
        if !(self.ack_random_factor >= 1.0 && self.ack_random_factor <= 10.0) {
            return Err(format!(
                "ack_random_factor must be between 1 and 10, not {}",
                self.ack_random_factor
            ));
        }
        if self.max_retransmit > 20 {
            return Err(format!(
                "max_retransmit must be at most 20, not {}",
                self.max_retransmit
            ));
        }
        if self.nstart == 0 {
            return Err("nstart must be at least 1".into());
        }
        if self.response_timeout.is_zero() {
            return Err("response_timeout must be greater than zero".into());
        }
        Ok(())
    }

    /// The first retransmission timeout: uniformly random in
    /// [ACK_TIMEOUT, ACK_TIMEOUT × ACK_RANDOM_FACTOR] (RFC 7252 §4.2). Doubled after each
    /// retransmission by the caller.
    pub fn initial_timeout(&self) -> Duration {
        let factor = if self.ack_random_factor > 1.0 {
            rand::random_range(1.0..=self.ack_random_factor)
        } else {
            1.0
        };
        self.ack_timeout.mul_f64(factor)
    }

    fn spread(&self, doublings: u32) -> Duration {
        // ACK_TIMEOUT × (2^n − 1) × ACK_RANDOM_FACTOR
        self.ack_timeout
            .mul_f64(((1u64 << doublings) - 1) as f64 * self.ack_random_factor)
    }

    /// MAX_TRANSMIT_SPAN: first transmission to last retransmission, at most (45 s).
    pub fn max_transmit_span(&self) -> Duration {
        self.spread(self.max_retransmit)
    }

    /// MAX_TRANSMIT_WAIT: first transmission to giving up, at most (93 s).
    pub fn max_transmit_wait(&self) -> Duration {
        self.spread(self.max_retransmit + 1)
    }

    /// MAX_RTT: 2 × MAX_LATENCY + PROCESSING_DELAY (202 s).
    pub fn max_rtt(&self) -> Duration {
        2 * self.max_latency + self.processing_delay
    }

    /// EXCHANGE_LIFETIME: MAX_TRANSMIT_SPAN + 2 × MAX_LATENCY + PROCESSING_DELAY (247 s):
    /// how long a confirmable message id is remembered for duplicate detection.
    pub fn exchange_lifetime(&self) -> Duration {
        self.max_transmit_span() + 2 * self.max_latency + self.processing_delay
    }

    /// NON_LIFETIME: MAX_TRANSMIT_SPAN + MAX_LATENCY (145 s): the same for a NON.
    pub fn non_lifetime(&self) -> Duration {
        self.max_transmit_span() + self.max_latency
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_times_match_rfc_7252_section_4_8_2() {
        let p = TransmissionParams::default();
        assert_eq!(p.max_transmit_span(), Duration::from_secs(45));
        assert_eq!(p.max_transmit_wait(), Duration::from_secs(93));
        assert_eq!(p.max_rtt(), Duration::from_secs(202));
        assert_eq!(p.exchange_lifetime(), Duration::from_secs(247));
        assert_eq!(p.non_lifetime(), Duration::from_secs(145));
        assert!(p.validate().is_ok());
    }

    #[test]
    fn initial_timeout_stays_within_bounds_and_varies() {
        let p = TransmissionParams::default();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let t = p.initial_timeout();
            assert!(
                t >= Duration::from_secs(2) && t <= Duration::from_secs(3),
                "{t:?}"
            );
            seen.insert(t.as_millis());
        }
        assert!(seen.len() > 100, "the first timeout must be randomised");
    }

    #[test]
    fn factor_one_means_no_randomisation() {
        let p = TransmissionParams {
            ack_random_factor: 1.0,
            ..Default::default()
        };
        assert_eq!(p.initial_timeout(), Duration::from_secs(2));
    }

    #[test]
    fn validate_rejects_nonsense() {
        let bad = [
            TransmissionParams {
                ack_timeout: Duration::ZERO,
                ..Default::default()
            },
            TransmissionParams {
                ack_random_factor: 0.5,
                ..Default::default()
            },
            TransmissionParams {
                ack_random_factor: f64::NAN,
                ..Default::default()
            },
            TransmissionParams {
                max_retransmit: 64,
                ..Default::default()
            },
            TransmissionParams {
                nstart: 0,
                ..Default::default()
            },
        ];
        for p in bad {
            assert!(p.validate().is_err(), "{p:?}");
        }
    }
}
