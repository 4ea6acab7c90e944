//! The gateway's side of history: the writer started when a device keeps history, the
//! retention it applies kept in step with the configuration, and the reads of devices
//! that report only when asked, at their history's period.

use std::time::{Duration, Instant};

use fieldgate_api::DeviceId;

use super::tasks::Done;
use super::Gateway;
use crate::history::writer::{Recorder, Retention, Writer, WriterConfig};
use crate::xmpp::readout;

/// The running writer and the core's handle to it.
pub(super) struct Keeper {
    pub(super) recorder: Recorder,
    writer: Writer,
}

impl Keeper {
    /// Drops the handle (the writer's queue closes) and waits for the writer's last
    /// commit, at most 10 s.
    pub(super) async fn stop(self) {
        let Keeper { recorder, writer } = self;
        drop(recorder);
        let join = tokio::task::spawn_blocking(move || writer.join());
        if tokio::time::timeout(Duration::from_secs(10), join)
            .await
            .is_err()
        {
            tracing::error!("history writer did not finish in time: the last samples may be lost");
        }
    }
}

impl Gateway {
    /// How long each kept series is kept, as configured now.
    fn retention(&self) -> Retention {
        let mut r = Retention::default();
        for d in self.devices.values() {
            for (f, h) in d.cfg.fields.iter().zip(d.cfg.history.iter()) {
                if let Some(h) = h {
                    r.series
                        .insert((d.cfg.id.to_string(), f.name.to_string()), h.keep);
                }
            }
        }
        r
    }

    /// Starts the writer if a device keeps history and none runs; hands it the retention.
    pub(super) fn start_history(&mut self) {
        let wanted = self.devices.values().any(|d| d.kept.is_some());
        if let Some(k) = &self.history {
            k.recorder.set_retention(self.retention());
            return;
        }
        if !wanted {
            return;
        }
        let h = &self.cfg.history;
        let mut cfg = WriterConfig::new(h.file.clone(), h.max_size);
        cfg.commit_interval = h.commit_interval;
        match Writer::start(cfg, self.retention()) {
            Ok((writer, recorder)) => {
                tracing::info!(store = %h.file.display(), max_size = h.max_size, "history kept");
                self.history = Some(Keeper { recorder, writer });
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start the history writer: no history kept")
            }
        }
    }

    /// The next history read due, if any.
    pub(super) fn next_keep(&self) -> Option<Instant> {
        self.keep_schedule.first().map(|(at, _)| *at)
    }

    /// Starts the history reads that are due and puts their devices back on the schedule.
    pub(super) fn keep_due(&mut self) {
        let now = Instant::now();
        while let Some((at, id)) = self.keep_schedule.first().cloned() {
            if at > now {
                break;
            }
            self.keep_schedule.pop_first();
            let Some(dev) = self.devices.get(&id) else {
                continue; // removed
            };
            let Some(k) = dev.kept.as_ref() else {
                continue; // no longer kept
            };
            let period = k.read_period(self.cfg.history.read_interval);
            // On the period's schedule, not from whenever this ran.
            let next = (at + period).max(now);
            self.keep_schedule.insert((next, id.clone()));
            if dev.keeping {
                continue; // the last read is not back yet
            }
            self.start_keep_read(&id);
        }
    }

    fn start_keep_read(&mut self, id: &DeviceId) {
        let adapter = match self.devices.get(id) {
            Some(dev) => self.requests_of(dev),
            None => return,
        };
        let Some(dev) = self.devices.get_mut(id) else {
            return;
        };
        let Some(k) = dev.kept.as_ref() else {
            return;
        };
        let fields: Vec<String> = k.fields().map(|f| f.to_string()).collect();
        dev.keeping = true;
        let timeout = self.cfg.readout.timeout;
        let id = id.clone();
        self.tasks.spawn(async move {
            let (fresh, error) = readout::read_for_cache(adapter, &id, fields, timeout).await;
            Done::Kept {
                device: id,
                fresh,
                error,
            }
        });
    }
}

/// The most values (samples, or periods) one historical readout returns.
const MAX_HISTORY_VALUES: u64 = 1_000_000;

impl Gateway {
    /// What a readout request asks of history, if anything: the samples themselves for
    /// `historical='true'`, `historicalOther` or `historicalSecond`; one value per period
    /// for the other period types; `all='true'` includes the samples only when `from` or
    /// `to` bounds them (a plain "everything" readout must not dump a year of history).
    pub(super) fn history_part(
        &self,
        req: &crate::xmpp::payload::sensordata::Req,
        dev: &super::Device,
        named: &dyn Fn(&str) -> bool,
    ) -> Option<crate::history::readout::HistoryPart> {
        use crate::history::readout::{HistoryPart, PERIODS};
        use crate::xmpp::payload::common::FieldTypes;
        let bounded = req.from.is_some() || req.to.is_some();
        let raw = req.historical
            || req
                .types
                .intersects(FieldTypes::HISTORICAL_OTHER | FieldTypes::HISTORICAL_SECOND)
            || (req.all && bounded);
        let periods: Vec<_> = PERIODS
            .iter()
            .filter(|(t, _)| req.types.contains(*t))
            .copied()
            .collect();
        if !raw && periods.is_empty() {
            return None;
        }
        let ms = |t: &Option<crate::xmpp::payload::xsd::XsDateTime>, default: i64| {
            t.as_ref()
                .and_then(|x| x.to_system_time())
                .map(crate::history::readout::ms)
                .unwrap_or(default)
        };
        Some(HistoryPart {
            file: self.cfg.history.file.clone(),
            device: dev.cfg.id.to_string(),
            fields: dev
                .specs
                .iter()
                .filter(|s| named(&s.name))
                .cloned()
                .collect(),
            from: ms(&req.from, i64::MIN),
            to: ms(&req.to, i64::MAX),
            raw,
            periods,
            max_values: MAX_HISTORY_VALUES,
        })
    }
}
